"""The window's behaviour against a scripted engine: streaming, stop, regenerate,
edit, search, export/import, keyboard, responsiveness, errors, shutdown.

Tests wait on signals, never on sleeps. Real generation is in test_gui_engine.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QElapsedTimer, Qt, QTimer, QUrl
from PySide6.QtGui import QGuiApplication

from mixdesk.app.gui.markdown import render
from mixdesk.app.gui.session import build_prompt, title_from
from mixdesk.app.gui.statusbar import CPU_ONLY
from mixdesk.engine.chats import ChatStore, Message
from mixdesk.engine.events import SamplingParams

# the offscreen platform warns about a window feature it lacks; nothing of ours
pytestmark = pytest.mark.qt_log_ignore("does not support propagateSizeHints")


def send(qtbot: Any, gui: Any, text: str, timeout: int = 20_000) -> Message:
    """Type `text`, press Enter, wait for the answer to finish; return it."""
    with qtbot.waitSignal(gui.session.message_finished, timeout=timeout) as blocker:
        gui.window.composer.edit.setPlainText(text)
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
    return blocker.args[0]


def test_send_streams_and_saves_the_answer(qtbot: Any, ready: Any) -> None:
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=40))
    streamed: list[str] = []
    gui.session.message_text_changed.connect(lambda _mid, text: streamed.append(text))
    answer = send(qtbot, gui, "How do I build a car?")

    assert answer.status == "complete"
    assert answer.content.startswith("Start with a chassis")
    assert answer.stats and answer.stats["generated_tokens"] == 40
    # text arrived in growing batches, not once at the end, and not per token
    assert 1 <= len(streamed) < 40
    assert all(answer.content.startswith(s) for s in streamed)
    # the view shows it, with per-message stats
    widget = gui.window.chat_view.widgets[answer.id]
    assert "chassis" in widget.body.toPlainText()
    assert "tok/s" in widget.stats_label.text()
    assert gui.window.composer.text() == ""
    assert gui.window.status.context.text() == "ctx 47/2048"
    # the conversation got a title from the first message, and both turns are on disk
    conv = gui.session.current
    assert conv is not None and conv.title == "How do I build a car?"
    assert [m.role for m in ChatStore(gui.store.path).messages(conv.id)] == ["user", "assistant"]


def test_user_turn_is_on_disk_before_generation_starts(
        qtbot: Any, ready: Any, fake_engine: Any, tmp_path: Path) -> None:
    seen: list[list[tuple[str, str, str]]] = []

    def check_disk(_prompt: Any) -> None:  # runs on the worker thread, before any token
        db = sqlite3.connect(tmp_path / "chats.sqlite3")
        seen.append(db.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall())
        db.close()

    fake_engine.on_start = check_disk
    gui = ready
    send(qtbot, gui, "Remember this sentence.")
    assert seen == [[("user", "Remember this sentence.", "complete"),
                     ("assistant", "", "streaming")]]


def test_stop_takes_effect_within_one_token_and_keeps_partial_text(
        qtbot: Any, ready: Any, fake_engine: Any) -> None:
    fake_engine.tps = 200.0  # slow enough to stop mid-answer
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=2000))
    with qtbot.waitSignal(gui.session.message_text_changed, timeout=10_000):
        gui.window.composer.edit.setPlainText("Tell me everything.")
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
    assert gui.window.composer.button.text() == "Stop"
    with qtbot.waitSignal(gui.session.message_finished, timeout=10_000) as blocker:
        qtbot.keyClick(gui.window, Qt.Key.Key_Escape)  # Esc stops
    answer = blocker.args[0]
    assert answer.status == "stopped"
    assert answer.content.startswith("Start with")
    assert len(answer.content) < 2000 * 3
    assert fake_engine.after_cancel == [0] or fake_engine.after_cancel[-1] <= 1
    assert gui.window.composer.button.text() == "Send"
    widget = gui.window.chat_view.widgets[answer.id]
    assert widget.status_badge.text() == "stopped" and widget.status_badge.isVisibleTo(widget)
    assert ChatStore(gui.store.path).message(answer.id).content == answer.content


def test_regenerate_replaces_the_last_answer(qtbot: Any, ready: Any, fake_engine: Any) -> None:
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=50))
    first = send(qtbot, gui, "Hi")
    fake_engine.answer = "A different answer."
    widget = gui.window.chat_view.widgets[first.id]
    assert widget.regenerate_button.isVisibleTo(widget)
    with qtbot.waitSignal(gui.session.message_finished, timeout=10_000) as blocker:
        qtbot.mouseClick(widget.regenerate_button, Qt.MouseButton.LeftButton)
    second = blocker.args[0]
    assert second.content == "A different answer."
    assert fake_engine.prompts[-1] == [{"role": "user", "content": "Hi"}]
    messages = gui.session.messages()
    assert [(m.role, m.content) for m in messages] == [("user", "Hi"),
                                                       ("assistant", "A different answer.")]
    assert list(gui.window.chat_view.widgets) == [m.id for m in messages]


def test_edit_and_resend_drops_later_turns(qtbot: Any, ready: Any, fake_engine: Any) -> None:
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=10, temperature=0.3))
    send(qtbot, gui, "first question")
    send(qtbot, gui, "second question")
    first_user = gui.session.messages()[0]
    widget = gui.window.chat_view.widgets[first_user.id]
    qtbot.mouseClick(widget.edit_button, Qt.MouseButton.LeftButton)
    assert widget.editor is not None
    widget.editor.setPlainText("a better first question")
    fake_engine.answer = "Better."
    with qtbot.waitSignal(gui.session.message_finished, timeout=10_000):
        widget._submit_edit()
    messages = gui.session.messages()
    assert [(m.role, m.content) for m in messages] == [("user", "a better first question"),
                                                       ("assistant", "Better.")]
    assert fake_engine.prompts[-1] == [{"role": "user", "content": "a better first question"}]


def test_system_prompt_and_params_reach_the_engine_and_persist(
        qtbot: Any, ready: Any, fake_engine: Any) -> None:
    gui = ready
    panel = gui.window.side_panel
    gui.window.panel_button.setChecked(True)
    assert panel.isVisible()
    panel.system_prompt.setPlainText("Answer in French.")
    panel.max_tokens.setValue(4)
    panel.temperature.setValue(0.0)
    answer = send(qtbot, gui, "Hello")
    assert fake_engine.prompts[-1][0] == {"role": "system", "content": "Answer in French."}
    assert answer.stats and answer.stats["generated_tokens"] == 4
    conv = gui.session.store.conversation(gui.session.current.id)
    assert conv.system_prompt == "Answer in French."
    assert conv.params["max_new_tokens"] == 4 and conv.params["temperature"] == 0.0


def test_search_finds_a_word_from_an_old_chat(qtbot: Any, ready: Any) -> None:
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=2))
    send(qtbot, gui, "Tell me about the aubergine harvest")
    old_id = gui.session.current.id
    qtbot.keyClick(gui.window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)  # Ctrl+N
    assert gui.session.current is None and not gui.window.chat_view.widgets
    send(qtbot, gui, "Something else entirely")
    qtbot.keyClick(gui.window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)  # Ctrl+F
    assert gui.window.sidebar.search.hasFocus()
    model = gui.window.list_model
    with qtbot.waitSignal(gui.window.sidebar.search_changed, timeout=5_000):
        qtbot.keyClicks(gui.window.sidebar.search, "auberg")
    ids = [r.conversation_id for r in model.rows if not r.is_header]
    assert ids == [old_id]
    index = model.index(model.row_of(old_id))
    with qtbot.waitSignal(gui.session.conversation_opened, timeout=5_000):
        gui.window.sidebar.list.clicked.emit(index)
    assert gui.session.current.id == old_id
    texts = [w.text for w in gui.window.chat_view.message_widgets()]
    assert texts[0] == "Tell me about the aubergine harvest"


def test_rename_delete_export_import(qtbot: Any, ready: Any, fake_engine: Any,
                                     tmp_path: Path) -> None:
    gui = ready
    fake_engine.answer = "```python\nprint('hi')\n```"
    send(qtbot, gui, "code please")
    cid = gui.session.current.id
    gui.window.ask_text = lambda *_a: "Python greeting"
    gui.window.rename_conversation(cid)
    assert [r.text for r in gui.window.list_model.rows if not r.is_header] == ["Python greeting"]

    exported = tmp_path / "chat.json"
    exported.write_text(gui.session.export_json(cid), encoding="utf-8")
    gui.window.confirm = lambda *_a: True
    gui.window.delete_conversation(cid)
    assert gui.session.conversations() == []
    assert gui.session.current is None

    gui.window.import_file(exported)
    (conv,) = gui.session.conversations()
    assert conv.title == "Python greeting" and gui.session.current.id == conv.id
    assert [m.content for m in gui.session.messages()] == ["code please", fake_engine.answer]

    bad = tmp_path / "bad.json"
    bad.write_text("{oops", encoding="utf-8")
    gui.window.import_file(bad)
    assert gui.window.banner.isVisible() and "not valid JSON" in gui.window.banner.text()
    assert len(gui.session.conversations()) == 1


def test_code_block_is_highlighted_and_copy_link_copies(
        qtbot: Any, ready: Any, fake_engine: Any) -> None:
    gui = ready
    code = "def double(x):\n    return 2 * x\n"
    fake_engine.answer = f"Here:\n\n```python\n{code}```\n\nDone."
    answer = send(qtbot, gui, "write a function")
    widget = gui.window.chat_view.widgets[answer.id]
    html = widget.body.toHtml()
    assert "def" in widget.body.toPlainText() and "Copy" in widget.body.toPlainText()
    assert html.count("color:") > 3  # pygments coloured the tokens
    QGuiApplication.clipboard().clear()
    widget.body.link_activated.emit(QUrl("copy:0"))
    assert QGuiApplication.clipboard().text() == code


def test_markdown_pieces_render_like_the_whole_with_global_copy_links() -> None:
    from mixdesk.app.gui.markdown import split_blocks  # noqa: PLC0415

    text = ("Intro:\n\n```py\na = 1\n\nb = 2\n```\n\n1. first\n\n2. second\n\n"
            "   still second\n\n~~~\nraw\n~~~\n")
    pieces = split_blocks(text)
    assert "\n".join(pieces) == text
    assert any(p.startswith("```py") and p.rstrip().endswith("```") for p in pieces)
    assert any("still second" in p and p.startswith("2. second") for p in pieces)
    r = render(text)
    assert r.code_blocks == ["a = 1\n\nb = 2\n", "raw\n"]
    assert 'href="copy:0"' in r.html and 'href="copy:1"' in r.html
    assert '<ol start="2">' in r.html  # numbering survives the cut


def test_markdown_escapes_html_and_streams_unclosed_fences() -> None:
    r = render("<b>x</b> and\n\n```py\nprint(1)")
    assert "&lt;b&gt;" in r.html and "<b>x</b>" not in r.html
    assert r.code_blocks == ["print(1)"]
    assert 'href="copy:0"' in r.html


def test_shift_enter_adds_a_newline_and_no_model_keeps_the_text(
        qtbot: Any, make_gui: Any, fake_engine: Any) -> None:
    gui = make_gui(engine=fake_engine)
    edit = gui.window.composer.edit
    qtbot.keyClicks(edit, "line one")
    qtbot.keyClick(edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(edit, "line two")
    assert edit.toPlainText() == "line one\nline two"
    qtbot.keyClick(edit, Qt.Key.Key_Return)  # no model loaded: nothing is sent or lost
    assert edit.toPlainText() == "line one\nline two"
    assert gui.window.banner.isVisible() and "Load a model" in gui.window.banner.text()
    assert gui.session.conversations() == []


def test_bad_model_folder_shows_a_banner_not_a_traceback(
        make_gui: Any, fake_engine: Any, load_model: Any, tmp_path: Path) -> None:
    gui = make_gui(engine=fake_engine)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    load_model(gui, empty, expect="failed")
    text = gui.window.banner.text()
    assert gui.window.banner.isVisible() and "config.json" in text
    assert "Traceback" not in text
    assert gui.window.model_button.text() == "Choose a model"


def test_first_run_offers_the_demo_and_hardware_is_shown(qtbot: Any, make_gui: Any,
                                                         fake_engine: Any) -> None:
    gui = make_gui(engine=fake_engine)  # the models folder is empty
    assert gui.window.pages.currentWidget() is gui.window.first_run
    assert gui.window.first_run.build_button.isEnabled()
    qtbot.waitUntil(lambda: gui.window.status.hardware != {}, timeout=30_000)
    device = gui.window.status.device.text()
    assert device == CPU_ONLY or gui.window.status.hardware.get("gpu") == device
    assert "RAM" in gui.window.status.ram.text()


def test_window_stays_responsive_at_500_tokens_per_second(
        qtbot: Any, ready: Any, fake_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Event-loop latency stays under 50 ms (nine ticks in ten) during a 500 tok/s stream
    (issue 6 asks for this measurement), because redraws are coalesced, asserted first."""
    from mixdesk.app.gui import chatview  # noqa: PLC0415

    renders = 0

    def counted_render(*args: Any, **kwargs: Any) -> Any:
        nonlocal renders
        renders += 1
        return render(*args, **kwargs)

    monkeypatch.setattr(chatview, "render", counted_render)
    fake_engine.tps = 500.0
    block = ("Some **markdown** with `code`, a list:\n\n- one\n- two\n\n"
             "```python\ndef double(x):\n    return 2 * x\n```\n\n")
    text = "".join(block.replace("double", f"double{i}") for i in range(80))  # ~9 KB
    fake_engine.tokens = [text[i:i + 12] for i in range(0, len(text), 12)]  # 1.5 s of stream
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=4000))
    gaps: list[float] = []
    clock = QElapsedTimer()
    ticker = QTimer()
    ticker.setInterval(5)
    ticker.timeout.connect(lambda: gaps.append(clock.restart()))
    with qtbot.waitSignal(gui.session.message_finished, timeout=60_000) as blocker:
        gui.window.composer.edit.setPlainText("stream fast")
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
        clock.start()
        ticker.start()
    ticker.stop()
    assert blocker.args[0].stats["generated_tokens"] == len(fake_engine.tokens) >= 650
    assert blocker.args[0].content == text
    ordered = sorted(gaps[1:])
    print(f"{renders} renders for {len(fake_engine.tokens)} tokens; event-loop gaps: "
          f"worst {ordered[-1]} ms, second {ordered[-2]} ms, "
          f"median {ordered[len(ordered) // 2]} ms over {len(gaps)} ticks")
    # one render per token would be 650+; coalescing keeps it to tens
    assert 1 <= renders < len(fake_engine.tokens) / 5
    assert len(gaps) > 100
    # The loop keeps ticking: nine ticks in ten come within 50 ms. The worst single gaps
    # are printed, not asserted: on a shared 2-core CI machine an OS hiccup has made two
    # ticks 62-68 ms late (CI run of 2026-11-22), which says nothing about the window.
    p90 = ordered[int(len(ordered) * 0.9)]
    assert p90 < 50, f"90th percentile event-loop gap {p90} ms"


def test_restart_shows_every_conversation(qtbot: Any, ready: Any, make_gui: Any,
                                          fake_engine: Any) -> None:
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=3))
    send(qtbot, gui, "chat number one")
    gui.session.new_conversation()
    send(qtbot, gui, "chat number two")
    gui.window.close()
    gui.shutdown()
    assert not gui.client.engine_thread.isRunning()

    again = make_gui(engine=fake_engine)
    titles = [r.text for r in again.window.list_model.rows if not r.is_header]
    assert titles == ["chat number two", "chat number one"]
    assert [r.text for r in again.window.list_model.rows if r.is_header] == ["Today"]
    again.session.open_conversation(again.session.conversations()[1].id)
    assert [w.text for w in again.window.chat_view.message_widgets()][0] == "chat number one"
    # the status bar shows that chat's last answer, though no model is loaded now
    assert again.window.status.context.text() == "ctx 10/2048"


def test_shutdown_mid_answer_is_clean_and_saves_the_partial_answer(
        qtbot: Any, ready: Any, fake_engine: Any) -> None:
    fake_engine.tps = 200.0
    gui = ready
    gui.session.set_params(SamplingParams(max_new_tokens=5000))
    with qtbot.waitSignal(gui.session.message_text_changed, timeout=10_000):
        gui.session.send("long answer please")
    mid = gui.session.streaming_message_id
    t0 = time.perf_counter()
    gui.shutdown()
    took = time.perf_counter() - t0
    assert not gui.client.engine_thread.isRunning()
    assert took < 2.0
    saved = ChatStore(gui.store.path).message(mid)
    assert saved.status == "stopped" and saved.content.startswith("Start with")


def test_engine_failure_keeps_the_conversation(qtbot: Any, make_gui: Any,
                                               fake_model_dir: Path, load_model: Any) -> None:
    from mixdesk.app.gui.worker import EngineWorker  # noqa: PLC0415
    from mixdesk.engine.errors import OutOfVRAMError  # noqa: PLC0415

    def oom(*_a: Any, **_k: Any) -> Any:
        raise OutOfVRAMError("The answer needs 2.1 GB more VRAM than the 13.6 GB budget; "
                             "load with a shorter context.")
        yield  # a generator

    worker = EngineWorker(load_fn=lambda p: {"path": p}, generate_fn=oom)
    gui = make_gui(worker=worker)
    load_model(gui, fake_model_dir)
    with qtbot.waitSignal(gui.session.notice, timeout=10_000):
        gui.session.send("will not fit")
    assert "VRAM" in gui.window.banner.text()
    msgs = gui.session.messages()
    assert [(m.role, m.content) for m in msgs] == [("user", "will not fit")]
    assert list(gui.window.chat_view.widgets) == [msgs[0].id]
    assert not gui.session.busy and gui.window.composer.button.text() == "Send"


def test_build_prompt_merges_roles_and_titles() -> None:
    def m(i: int, role: str, content: str) -> Message:
        return Message(i, 1, role, content, "complete", None, 0.0, 0.0)

    prompt = build_prompt(" sys ", [m(1, "user", "a"), m(2, "assistant", ""), m(3, "user", "b")])
    assert prompt == [{"role": "system", "content": "sys"},
                      {"role": "user", "content": "a\n\nb"}]
    assert title_from("\n  How   do I\nbuild") == "How do I"
    assert title_from("x" * 100).endswith("…") and len(title_from("x" * 100)) == 49


def test_settings_survive_garbage(settings: Any) -> None:
    settings.qsettings.setValue("appearance/theme", "purple")
    settings.qsettings.setValue("appearance/font_size", "huge")
    settings.qsettings.setValue("chat/default_params", "{not json")
    assert settings.theme == "system" and settings.font_size == 0
    assert settings.default_params == SamplingParams()
    settings.default_params = SamplingParams(temperature=0.1, top_k=3)
    assert json.loads(settings.qsettings.value("chat/default_params"))["top_k"] == 3
    assert settings.default_params.temperature == 0.1


def test_corrupt_chat_database_is_backed_up_and_the_user_told(
        qtbot: Any, tmp_path: Path, monkeypatch: Any, settings: Any) -> None:
    from mixdesk.app.gui.app import build_gui  # noqa: PLC0415

    monkeypatch.setenv("MIXDESK_HOME", str(tmp_path / "home"))
    db = tmp_path / "home" / "chats.sqlite3"
    db.parent.mkdir()
    db.write_bytes(b"\x00garbage, not SQLite" * 200)
    gui = build_gui(settings=settings, theme_name="light")  # the user's own store path
    qtbot.addWidget(gui.window)
    gui.window.show()
    try:
        text = gui.window.banner.text()
        assert gui.window.banner.isVisible() and "damaged" in text
        backups = list(db.parent.glob("chats.sqlite3.*.bak"))
        assert len(backups) == 1 and str(backups[0]) in text
        assert backups[0].read_bytes().startswith(b"\x00garbage")
        gui.session.set_system_prompt("fresh store works")  # writes a conversation
        assert len(gui.session.conversations()) == 1
    finally:
        gui.shutdown()


def test_crash_hook_logs_the_traceback_and_names_the_log(
        qtbot: Any, tmp_path: Path, monkeypatch: Any) -> None:
    import logging  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from mixdesk.app.gui import crash  # noqa: PLC0415

    shown: list[str] = []
    monkeypatch.setattr(crash.QMessageBox, "exec", lambda box: shown.append(box.text()))
    log_path = crash.setup_logging(tmp_path / "logs")
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # both restored after the test
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    reporter = crash.install_excepthook(log_path)
    try:
        try:
            raise RuntimeError("boom in a slot")
        except RuntimeError:
            with qtbot.waitSignal(reporter.crashed, timeout=5_000):
                sys.excepthook(*sys.exc_info())
        qtbot.waitUntil(lambda: bool(shown), timeout=5_000)
    finally:
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "baseFilename", "") == str(log_path):
                logging.getLogger().removeHandler(handler)
                handler.close()
    assert str(log_path) in shown[0] and "RuntimeError: boom in a slot" in shown[0]
    logged = log_path.read_text(encoding="utf-8")
    assert "Traceback" in logged and "boom in a slot" in logged


def test_system_prompt_edit_lands_in_the_chat_it_was_typed_in(
        qtbot: Any, ready: Any, fake_engine: Any) -> None:
    gui = ready
    fake_engine.answer = "ok"
    send(qtbot, gui, "chat A")
    chat_a = gui.session.current.id
    gui.window.panel_button.setChecked(True)
    panel = gui.window.side_panel
    qtbot.keyClicks(panel.system_prompt, "Be terse.")
    panel.temperature.setValue(0.25)  # a param change while the prompt edit is pending
    assert panel.system_prompt.toPlainText() == "Be terse."
    gui.window.new_chat()  # switch before the edit's timer fires
    assert gui.session.store.conversation(chat_a).system_prompt == "Be terse."
    assert gui.session.store.conversation(chat_a).params["temperature"] == 0.25
    assert panel.system_prompt.toPlainText() == ""  # the new chat has its own
    gui.window.open_conversation(chat_a)
    assert panel.system_prompt.toPlainText() == "Be terse."
    assert panel.temperature.value() == 0.25


def test_main_runs_the_real_entry_point_and_quits_cleanly(tmp_path: Path) -> None:
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "from PySide6.QtCore import QTimer\n"
        "from mixdesk.app.gui.app import application\n"
        "from mixdesk.app.gui import main\n"
        "app = application()\n"
        "QTimer.singleShot(1500, app.quit)\n"
        "raise SystemExit(main([]))\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MIXDESK_HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "chats.sqlite3").is_file()
    log = (tmp_path / "home" / "logs" / "mixdesk-gui.log").read_text(encoding="utf-8")
    assert "shut down cleanly" in log
    assert (tmp_path / "config" / "mixdesk" / "mixdesk.conf").is_file()  # geometry saved


def test_dark_theme_renders_code_on_a_dark_background(qtbot: Any, make_gui: Any,
                                                      fake_engine: Any,
                                                      fake_model_dir: Path,
                                                      load_model: Any) -> None:
    from mixdesk.app.gui.markdown import code_colors  # noqa: PLC0415

    gui = make_gui(engine=fake_engine, theme_name="dark")
    load_model(gui, fake_model_dir)
    assert gui.window.dark and gui.app.palette().base().color().lightness() < 80
    fake_engine.answer = "```rust\nfn main() {}\n```"
    answer = send(qtbot, gui, "rust please")
    html = gui.window.chat_view.widgets[answer.id].body.toHtml()
    assert code_colors(dark=True).background.lower() in html.lower()


def test_first_run_builds_the_demo_with_progress_then_is_ready_to_chat(
        qtbot: Any, make_gui: Any, fake_engine: Any, monkeypatch: Any) -> None:
    from mixdesk.engine import demo  # noqa: PLC0415

    def fake_ensure_demo(dest: Path, *, progress: Any) -> Path:  # on the task thread
        progress("reading SmolLM2-135M-Instruct", 0.0)
        progress("writing weights", 0.55)
        dest.mkdir(parents=True)
        (dest / "config.json").write_text('{"model_type": "mixtral", "num_local_experts": 8}')
        progress("done", 1.0)
        return dest

    monkeypatch.setattr(demo, "ensure_demo", fake_ensure_demo)
    gui = make_gui(engine=fake_engine)
    page = gui.window.first_run
    assert gui.window.pages.currentWidget() is page
    stages: list[tuple[str, float]] = []
    page_progress = page.set_progress
    monkeypatch.setattr(page, "set_progress",
                        lambda stage, f: (stages.append((stage, f)), page_progress(stage, f)))
    with qtbot.waitSignal(gui.session.model_state_changed, timeout=20_000,
                          check_params_cb=lambda state, _i: state == "ready"):
        qtbot.mouseClick(page.build_button, Qt.MouseButton.LeftButton)
    assert [s for s, _ in stages] == ["reading SmolLM2-135M-Instruct", "writing weights", "done"]
    assert gui.window.pages.currentIndex() == 0  # the chat page
    assert gui.session.model_info["name"] == "demo"
    assert [m.name for m in gui.window.local_models] == ["demo"]
    fake_engine.answer = "Paris."
    assert send(qtbot, gui, "What is the capital of France?").content == "Paris."


def test_model_menu_lists_local_models_and_loads_the_one_picked(
        qtbot: Any, make_gui: Any, fake_engine: Any, fake_model_dir: Path) -> None:
    other = fake_model_dir.parent / "another-model"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "mistral"}')
    gui = make_gui(engine=fake_engine)
    gui.window._fill_model_menu()
    labels = [a.text() for a in gui.window.model_menu.actions() if a.text()]
    assert labels[0].startswith("another-model · mistral")
    assert labels[1].startswith("fake-model · mixtral · 4 experts")
    with qtbot.waitSignal(gui.session.model_state_changed, timeout=10_000,
                          check_params_cb=lambda state, _i: state == "ready"):
        gui.window.model_menu.actions()[1].trigger()
    assert gui.window.model_button.text() == "fake-model · cpu"
    gui.window._fill_model_menu()
    checked = [a.text() for a in gui.window.model_menu.actions() if a.isChecked()]
    assert len(checked) == 1 and checked[0].startswith("fake-model")


def test_a_search_hit_opens_its_chat_scrolled_to_the_message(qtbot: Any, ready: Any,
                                                             fake_engine: Any) -> None:
    gui = ready
    gui.window.resize(900, 500)
    fake_engine.answer = "\n\n".join(f"Paragraph {i} of a long answer." for i in range(30))
    send(qtbot, gui, "the zeppelin question")  # the hit, at the top of a tall chat
    send(qtbot, gui, "another long one")
    gui.window.new_chat()
    hits = gui.session.search("zeppelin")
    gui.window.search("zeppelin")
    model = gui.window.list_model
    index = model.index(model.row_of(hits[0].conversation_id))
    gui.window.sidebar.list.clicked.emit(index)
    widget = gui.window.chat_view.widgets[hits[0].message_id]
    assert widget.text == "the zeppelin question"
    # scrolled into view (not left at the bottom) once the page has laid out
    qtbot.waitUntil(lambda: not widget.visibleRegion().isEmpty(), timeout=5_000)
    bar = gui.window.chat_view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=5_000)
    assert not widget.visibleRegion().isEmpty() and bar.value() < bar.maximum()


def test_drop_oldest_turn_keeps_the_system_prompt_and_alternation() -> None:
    from mixdesk.app.gui.worker import drop_oldest_turn  # noqa: PLC0415

    def msgs(*roles: str) -> list[dict[str, str]]:
        return [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]

    history = msgs("system", "user", "assistant", "user", "assistant", "user")
    shorter = drop_oldest_turn(history)
    assert [m["content"] for m in shorter] == ["system0", "user3", "assistant4", "user5"]
    assert [m["content"] for m in drop_oldest_turn(shorter)] == ["system0", "user5"]
    assert drop_oldest_turn(msgs("system", "user")) is None
    assert drop_oldest_turn(msgs("user")) is None
    assert [m["role"] for m in drop_oldest_turn(msgs("assistant", "user"))] == ["user"]
