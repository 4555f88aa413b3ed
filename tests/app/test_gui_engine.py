"""The window with the real engine on `tiny_mixtral`: real loads, real streamed
answers, stop, a bad folder, the selftest, and a SIGKILL mid-answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from mixdesk.app.gui.worker import EngineWorker, default_generate
from mixdesk.engine.chats import ChatStore
from mixdesk.engine.events import Done, Event, SamplingParams, Token

pytestmark = pytest.mark.qt_log_ignore("does not support propagateSizeHints")

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
REPO = Path(__file__).resolve().parents[2]


def test_real_answer_streams_into_the_window_and_the_store(
        qtbot: Any, make_gui: Any, load_model: Any, tiny_mixtral: Path) -> None:
    gui = make_gui()  # the real worker: engine.loader + engine.generate
    load_model(gui, tiny_mixtral)
    assert gui.window.model_button.text().startswith(tiny_mixtral.name)
    assert gui.window.status.context.text().startswith("ctx 0/")
    gui.session.set_params(GREEDY)
    batches: list[str] = []
    gui.session.message_text_changed.connect(lambda _mid, text: batches.append(text))
    with qtbot.waitSignal(gui.session.message_finished, timeout=120_000) as blocker:
        gui.window.composer.edit.setPlainText("How do I build a car?")
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
    answer = blocker.args[0]

    # the same greedy answer the engine gives directly, token for token
    from mixdesk.engine.generate import generate  # noqa: PLC0415
    from mixdesk.engine.loader import load_model as engine_load  # noqa: PLC0415

    lm = engine_load(tiny_mixtral)
    (done,) = [e for e in generate(lm, [{"role": "user", "content": "How do I build a car?"}],
                                   GREEDY, chat=True) if isinstance(e, Done)]
    assert answer.content == done.text and answer.content
    assert answer.status == "complete"
    assert answer.stats["generated_tokens"] == 12 and answer.stats["finish_reason"] == "length"
    assert answer.stats["ttft_s"] > 0 and answer.stats["context_max"] == lm.context
    assert batches and answer.content.startswith(batches[0])
    stored = ChatStore(gui.store.path).messages(answer.conversation_id)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"),
                                                    ("assistant", "complete")]
    assert stored[1].content == done.text
    assert "tok/s" in gui.window.status.speed.text()
    assert gui.window.status.context.text() == \
        f"ctx {answer.stats['context_used']}/{lm.context}"


def test_stop_within_one_token_on_the_real_engine(qtbot: Any, make_gui: Any, load_model: Any,
                                                  tiny_mixtral: Path) -> None:
    late: list[int] = []

    def counting_generate(lm: Any, prompt: Any, params: SamplingParams, *, chat: bool,
                          cancel: threading.Event) -> Iterator[Event]:
        late.append(0)
        for event in default_generate(lm, prompt, params, chat=chat, cancel=cancel):
            if isinstance(event, Token) and cancel.is_set():
                late[-1] += 1  # a token computed after Stop was pressed
            yield event

    gui = make_gui(worker=EngineWorker(generate_fn=counting_generate))
    load_model(gui, tiny_mixtral)
    gui.session.set_params(SamplingParams(temperature=0.0, max_new_tokens=400))
    with qtbot.waitSignal(gui.session.message_text_changed, timeout=120_000):
        gui.session.send("Tell me a long story.")
    with qtbot.waitSignal(gui.session.message_finished, timeout=60_000) as blocker:
        gui.session.stop()
    answer = blocker.args[0]
    assert answer.status == "stopped" and answer.stats["finish_reason"] == "cancelled"
    assert 0 < answer.stats["generated_tokens"] < 400
    assert late in ([0], [1])
    assert ChatStore(gui.store.path).message(answer.id).content == answer.content


def test_corrupt_model_folder_shows_a_banner(make_gui: Any, load_model: Any,
                                             tiny_mixtral: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in tiny_mixtral.iterdir():
        if f.suffix == ".json" or f.name.startswith("tokenizer"):
            (broken / f.name).write_bytes(f.read_bytes())
    shard = next(tiny_mixtral.glob("*.safetensors"))
    (broken / shard.name).write_bytes(shard.read_bytes()[:200])  # truncated
    gui = make_gui()
    load_model(gui, broken, expect="failed")
    banner = gui.window.banner
    assert banner.isVisible() and "Traceback" not in banner.text()
    assert banner.text().strip()
    # the app still works: a good model loads afterwards
    load_model(gui, tiny_mixtral)
    assert not banner.isVisible()


def _env() -> dict[str, str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_selftest_exits_zero_with_a_screenshot(tiny_mixtral: Path, tmp_path: Path) -> None:
    png = tmp_path / "selftest.png"
    code = ("import sys; from mixdesk.app.gui import main; "
            "sys.exit(main(sys.argv[1:], selftest=True))")
    result = subprocess.run(
        [sys.executable, "-c", code, "--model", str(tiny_mixtral), "--screenshot", str(png)],
        capture_output=True, text=True, timeout=300, env=_env(), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selftest: ok" in result.stdout
    assert png.stat().st_size > 10_000

    missing = subprocess.run(
        [sys.executable, "-c", code, "--model", str(tmp_path / "nope"), "--timeout", "60"],
        capture_output=True, text=True, timeout=300, env=_env(), check=False)
    assert missing.returncode == 1
    assert "selftest: FAILED" in missing.stderr and "Traceback" not in missing.stderr


APP_UNDER_KILL = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from PySide6.QtCore import QSettings
    from mixdesk.app.gui.app import build_gui, wait_until
    from mixdesk.app.gui.settings import Settings
    from mixdesk.engine.chats import ChatStore
    from mixdesk.engine.events import SamplingParams

    db, model, ini = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    gui = build_gui(store=ChatStore(db), theme_name="light",
                    settings=Settings(QSettings(ini, QSettings.Format.IniFormat)))
    gui.window.show()
    gui.session.load_model(model)
    assert wait_until(lambda: gui.session.model_state == "ready", 120)
    gui.session.set_params(SamplingParams(temperature=0.0, max_new_tokens=400))
    gui.session.send("Tell me a long story.")
    mid = gui.session.streaming_message_id
    reader = ChatStore(db)  # what a crash would leave: only what is committed
    wait_until(lambda: len(reader.message(mid).content) >= 8, 120)
    print(f"committed {len(reader.message(mid).content)}", flush=True)
    wait_until(lambda: False, 600)  # keep streaming until killed
    """
)


def test_sigkill_mid_answer_then_reopen_shows_it_interrupted(
        make_gui: Any, tiny_mixtral: Path, tmp_path: Path) -> None:
    db = tmp_path / "chats.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", APP_UNDER_KILL, str(db), str(tiny_mixtral),
         str(tmp_path / "kill.ini")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("committed"), line + (proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    gui = make_gui(db=db)  # the app opened again on the same file
    (conv,) = gui.session.conversations()
    gui.session.open_conversation(conv.id)
    user, answer = gui.session.messages()
    assert (user.role, user.content, user.status) == ("user", "Tell me a long story.",
                                                      "complete")
    assert answer.status == "interrupted" and len(answer.content) >= int(line.split()[1])
    widget = gui.window.chat_view.widgets[answer.id]
    assert widget.status_badge.text().startswith("interrupted")
    assert gui.window.banner.isVisible() and "interrupted" in gui.window.banner.text()


def test_a_history_longer_than_the_context_drops_the_oldest_exchanges(
        qtbot: Any, make_gui: Any, load_model: Any, tiny_mixtral: Path) -> None:
    gui = make_gui()
    load_model(gui, tiny_mixtral)
    context = gui.session.model_info["context"]
    store = gui.session.store
    conv = store.create_conversation("long", params={"temperature": 0.0, "max_new_tokens": 8})
    filler = "lorem ipsum dolor sit amet " * (context // 20)  # each message ~ the context
    for i in range(3):
        store.add_message(conv.id, "user", f"question {i} {filler}")
        store.add_message(conv.id, "assistant", f"answer {i} {filler}")
    gui.session.open_conversation(conv.id)
    with qtbot.waitSignal(gui.session.message_finished, timeout=120_000) as blocker:
        gui.session.send("and now a short one")
    answer = blocker.args[0]
    assert answer.status == "complete", gui.window.banner.text()
    assert answer.stats["dropped_turns"] == 3
    assert answer.stats["context_used"] <= context
    assert "left out to fit the context" in \
        gui.window.chat_view.widgets[answer.id].stats_label.text()
    assert len(store.messages(conv.id)) == 8  # nothing is deleted from the history
