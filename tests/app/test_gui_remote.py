"""Remote engines and the Local server switch in the window, on `tiny_mixtral`.

A `mixdesk serve` equivalent runs in the test (BackgroundServer on loopback);
the window adds it as a server, chats through it, survives it going away; the
Local server switch serves the window's own model to the official `openai`
client and logs each request.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from mixdesk.app.gui.preferences import PreferencesDialog
from mixdesk.app.gui.serverdialog import AddServerDialog
from mixdesk.app.server import BackgroundServer, create_app
from mixdesk.engine.chats import ChatStore
from mixdesk.engine.events import Done, SamplingParams
from mixdesk.engine.generate import generate
from mixdesk.engine.loader import load_model as engine_load

pytestmark = pytest.mark.qt_log_ignore("does not support propagateSizeHints")

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
PROMPT = "How do I build a car?"


@pytest.fixture
def tiny_server(tiny_mixtral: Path) -> Iterator[BackgroundServer]:
    """`mixdesk serve tiny_mixtral` on a free loopback port, model id "tiny"."""
    server = BackgroundServer(create_app(engine_load(tiny_mixtral), model_id="tiny"))
    server.start()
    yield server
    server.stop()


def local_greedy_answer(model: Path, prompt: str) -> Done:
    lm = engine_load(model)
    (done,) = [e for e in generate(lm, [{"role": "user", "content": prompt}], GREEDY, chat=True)
               if isinstance(e, Done)]
    assert done.text
    return done


def free_port() -> int:
    """A port nothing listens on (bound, then closed), so connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens there: a new server may bind it (as `mixdesk serve` does, with
    SO_REUSEADDR: connections the old server closed may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def try_connection(qtbot: Any, gui: Any, url: str, key: str = "") -> tuple[AddServerDialog,
                                                                           bool, str]:
    dialog = AddServerDialog(gui.window)
    qtbot.addWidget(dialog)
    qtbot.keyClicks(dialog.url, url)
    qtbot.keyClicks(dialog.api_key, key)
    with qtbot.waitSignal(dialog.tested, timeout=30_000) as blocker:
        qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    ok, text = blocker.args
    return dialog, ok, text


def pick_model(qtbot: Any, gui: Any, label: str, expect: str = "ready") -> None:
    window = gui.window
    window.model_menu.aboutToShow.emit()  # what opening the menu does
    labels = [a.text() for a in window.model_menu.actions()]
    assert label in labels, labels
    action = next(a for a in window.model_menu.actions() if a.text() == label)
    with qtbot.waitSignal(gui.session.model_state_changed, timeout=30_000,
                          check_params_cb=lambda state, _info: state != "loading"):
        action.trigger()
    assert gui.session.model_state == expect, window.banner.text()


def send(qtbot: Any, gui: Any, text: str) -> Any:
    with qtbot.waitSignal(gui.session.message_finished, timeout=120_000) as blocker:
        gui.window.composer.edit.setPlainText(text)
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
    return blocker.args[0]


def test_chat_through_an_added_server_matches_the_local_engine(
        qtbot: Any, make_gui: Any, tiny_mixtral: Path, tiny_server: BackgroundServer) -> None:
    gui = make_gui()
    host = f"127.0.0.1:{tiny_server.port}"
    dialog, ok, text = try_connection(qtbot, gui, f"http://{host}")  # no /v1: it is added
    assert ok, text
    assert "tiny" in dialog.outcome.text() and dialog.ok_button.isEnabled()
    assert dialog.server is not None and dialog.server.url == tiny_server.url
    gui.window.save_server(dialog.server)
    assert [s.models for s in gui.session.settings.remote_servers] == [("tiny",)]

    pick_model(qtbot, gui, f"tiny · {host}")
    assert gui.window.model_button.text() == f"tiny · {host}"
    gui.session.set_params(GREEDY)
    answer = send(qtbot, gui, PROMPT)

    done = local_greedy_answer(tiny_mixtral, PROMPT)
    assert answer.content == done.text  # greedy: the server's tokens are the local engine's
    assert answer.status == "complete"
    assert answer.stats["generated_tokens"] == len(done.token_ids) == 12
    assert answer.stats["context_max"] == engine_load(tiny_mixtral).context
    stored = ChatStore(gui.store.path).messages(answer.conversation_id)
    assert [(m.role, m.content) for m in stored] == [("user", PROMPT),
                                                     ("assistant", done.text)]
    assert gui.session.settings.last_model == ""  # a remote model is not reopened at start


def test_a_server_that_goes_away_shows_a_banner_and_keeps_the_chat(
        qtbot: Any, make_gui: Any, tiny_server: BackgroundServer) -> None:
    gui = make_gui()
    dialog, ok, _ = try_connection(qtbot, gui, tiny_server.url)
    assert ok and dialog.server is not None
    gui.window.save_server(dialog.server)
    host = f"127.0.0.1:{tiny_server.port}"
    pick_model(qtbot, gui, f"tiny · {host}")
    gui.session.set_params(GREEDY)
    first = send(qtbot, gui, "Hello")

    tiny_server.stop()  # the server goes away between two messages
    with qtbot.waitSignal(gui.session.notice, timeout=30_000,
                          check_params_cb=lambda level, _text: level == "error"):
        gui.window.composer.edit.setPlainText("Still there?")
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
    assert gui.window.banner.isVisible()
    assert "cannot connect" in gui.window.banner.text()
    assert "Traceback" not in gui.window.banner.text()
    assert not gui.session.busy and gui.session.model_state == "ready"
    stored = ChatStore(gui.store.path).messages(first.conversation_id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Hello"), ("assistant", first.content), ("user", "Still there?")]
    assert [m.role for m in gui.session.messages()] == ["user", "assistant", "user"]

    # picking a model on a server that refuses connections keeps the model in use
    gui.window.save_server(dialog.server.__class__(f"http://127.0.0.1:{free_port()}/v1", "",
                                                   ("ghost",)))
    dead_host = gui.session.settings.remote_servers[-1].host
    pick_model(qtbot, gui, f"ghost · {dead_host}", expect="ready")
    assert gui.window.model_button.text() == f"tiny · {host}"
    assert "cannot connect" in gui.window.banner.text()


def test_add_server_dialog_says_why_a_url_fails(qtbot: Any, make_gui: Any) -> None:
    gui = make_gui()
    dialog, ok, text = try_connection(qtbot, gui, f"http://127.0.0.1:{free_port()}/v1")
    assert not ok and not dialog.ok_button.isEnabled() and dialog.server is None
    assert text.startswith("Cannot connect to") and text.endswith(".")
    assert dialog.outcome.text() == text
    _, ok, text = try_connection(qtbot, gui, "ftp://example")
    assert not ok and "is not a server URL" in text


def test_local_server_switch_serves_openai_and_logs_requests(
        qtbot: Any, make_gui: Any, load_model: Any, tiny_mixtral: Path) -> None:
    gui = make_gui()
    load_model(gui, tiny_mixtral)
    gui.session.settings.server_port = 0  # any free port: tests run side by side
    local = gui.window.local_server
    dialog = PreferencesDialog(gui.session.settings, gui.window, local_server=local)
    qtbot.addWidget(dialog)
    panel = dialog.server_panel
    assert panel is not None and not panel.switch.isChecked() and not panel.copy.isEnabled()

    with qtbot.waitSignal(local.state_changed, timeout=60_000,
                          check_params_cb=lambda state, _url, _msg: state == "on"):
        panel.switch.click()
    url = panel.url.text()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and url == local.url
    assert panel.switch.text() == f"Serve the loaded model on {url}"
    assert not panel.port.isEnabled()
    panel.copy.click()
    assert QGuiApplication.clipboard().text() == url
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    with qtbot.waitSignal(local.record_added, timeout=60_000) as blocker:
        reply = client.chat.completions.create(
            model=tiny_mixtral.name, messages=[{"role": "user", "content": PROMPT}],
            temperature=0.0, max_tokens=12)
    line = blocker.args[0]
    assert "POST /v1/chat/completions  200" in line and "→ 12 tokens" in line
    assert line in panel.log_view.toPlainText()
    served = reply.choices[0].message.content
    assert served == local_greedy_answer(tiny_mixtral, PROMPT).text

    # the window's own chats wait in the server's queue: one generation at a time
    gui.session.set_params(GREEDY)
    with qtbot.waitSignal(local.record_added, timeout=60_000) as logged:
        answer = send(qtbot, gui, PROMPT)
    assert answer.content == served
    assert "stream" in logged.args[0]
    assert len(local.lines) == 2 == len(panel.log_view.toPlainText().splitlines())

    with qtbot.waitSignal(local.state_changed, timeout=30_000,
                          check_params_cb=lambda state, _url, _msg: state == "off"):
        panel.switch.click()
    assert port_is_free(port) and panel.url.text() == "" and panel.port.isEnabled()
    answer = send(qtbot, gui, "And the wheels?")  # back on the worker's own engine
    assert answer.status == "complete" and len(local.lines) == 2

    # app shutdown stops a server that is still on
    with qtbot.waitSignal(local.state_changed, timeout=60_000,
                          check_params_cb=lambda state, _url, _msg: state == "on"):
        panel.switch.click()
    port = int(local.url.rsplit(":", 1)[1].split("/")[0])
    assert not port_is_free(port)
    gui.shutdown()
    assert port_is_free(port)


def test_local_server_without_a_local_model_says_so(qtbot: Any, make_gui: Any) -> None:
    gui = make_gui()
    local = gui.window.local_server
    with qtbot.waitSignal(local.state_changed, timeout=30_000,
                          check_params_cb=lambda state, _url, _msg: state == "off") as blocker:
        local.set_enabled(True)
    assert local.state == "off" and local.url == ""
    assert blocker.args[2].startswith("Load a local model first")


def test_a_server_with_an_api_key(qtbot: Any, make_gui: Any, tiny_mixtral: Path) -> None:
    key = "k-" + socket.gethostname()
    with BackgroundServer(create_app(engine_load(tiny_mixtral), model_id="tiny",
                                     api_key=key)) as server:
        gui = make_gui()
        dialog, ok, text = try_connection(qtbot, gui, server.url)
        assert not ok and "needs an API key" in text and dialog.server is None
        dialog, ok, text = try_connection(qtbot, gui, server.url, "wrong")
        assert not ok and "check the API key" in text
        dialog, ok, text = try_connection(qtbot, gui, server.url, key)
        assert ok, text
        assert dialog.server is not None
        gui.window.save_server(dialog.server)
        saved = gui.session.settings
        saved.sync()
        assert saved.remote_servers[0].api_key == key  # kept in the settings file
        pick_model(qtbot, gui, f"tiny · 127.0.0.1:{server.port}")
        gui.session.set_params(GREEDY)
        answer = send(qtbot, gui, PROMPT)  # the saved key reaches the worker's engine
        assert answer.status == "complete" and answer.content


def test_local_server_stops_when_its_model_is_unloaded(
        qtbot: Any, make_gui: Any, load_model: Any, tiny_mixtral: Path) -> None:
    gui = make_gui()
    load_model(gui, tiny_mixtral)
    gui.session.settings.server_port = 0
    local = gui.window.local_server
    with qtbot.waitSignal(local.state_changed, timeout=60_000,
                          check_params_cb=lambda state, _url, _msg: state == "on"):
        local.set_enabled(True)
    port = int(local.url.rsplit(":", 1)[1].split("/")[0])
    with qtbot.waitSignal(local.state_changed, timeout=30_000,
                          check_params_cb=lambda state, _url, _msg: state == "off"):
        gui.session.unload_model()
    assert port_is_free(port)
    assert "its model was unloaded" in gui.window.banner.text()
