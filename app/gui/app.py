"""Start the desktop app: the QApplication, the store, the worker, the window.

`Gui` bundles what one window needs and shuts it down in the right order;
tests build it with their own store, settings and worker. `run` is what
`mixdesk gui` calls; `selftest` proves a build works end to end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QEventLoop, QSettings, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from mixdesk.app.gui import markdown, theme
from mixdesk.app.gui.crash import install_excepthook, setup_logging
from mixdesk.app.gui.gcguard import MainThreadCollector
from mixdesk.app.gui.mainwindow import MainWindow
from mixdesk.app.gui.session import ChatSession
from mixdesk.app.gui.settings import Settings
from mixdesk.app.gui.worker import EngineClient, EngineWorker
from mixdesk.engine.chats import ChatStore, open_chat_store
from mixdesk.engine.events import SamplingParams
from mixdesk.engine.paths import chats_db_path, logs_dir

log = logging.getLogger("mixdesk.gui")

SELFTEST_PROMPT = "What is the capital of France?"
SHUTDOWN_WAIT_MS = 10_000  # generation stops within a token; only a model load takes longer


def application(argv: list[str] | None = None) -> QApplication:
    """The process's QApplication, created once."""
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    app = QApplication(["mixdesk", *(argv or [])])
    app.setApplicationName("mixdesk")
    app.setOrganizationName("mixdesk")
    app.setApplicationDisplayName("mixdesk")
    app.setDesktopFileName("mixdesk")
    app.setWindowIcon(theme.app_icon())
    MainThreadCollector(parent=app)  # Qt objects must never be collected on a worker thread
    return app


@dataclass
class Gui:
    """One running window and what it owns.

    Attributes:
        app: the QApplication.
        store: the chat store.
        client: the engine worker's handle (owns the worker thread).
        session: the chat logic.
        window: the main window.
        store_notice: what `open_chat_store` said (damaged/locked database), or None.
    """

    app: QApplication
    store: ChatStore
    client: EngineClient
    session: ChatSession
    window: MainWindow
    store_notice: str | None = None
    closed: bool = field(default=False)

    def shutdown(self) -> None:
        """Stop generation, end the worker thread, finish the answer, close the store."""
        if self.closed:
            return
        self.closed = True
        self.client.shutdown(timeout_ms=SHUTDOWN_WAIT_MS)
        # deliver what the worker sent before it stopped (last tokens, finished)
        QCoreApplication.processEvents()
        self.session.close()
        self.store.close()
        log.info("shut down cleanly")


def build_gui(
    *,
    store: ChatStore | None = None,
    settings: Settings | None = None,
    worker: EngineWorker | None = None,
    theme_name: str | None = None,
    argv: list[str] | None = None,
) -> Gui:
    """Create the window with its store, settings and worker (defaults: the user's)."""
    app = application(argv)
    settings = settings or Settings()
    notice = None
    if store is None:
        opened = open_chat_store(chats_db_path())
        store, notice = opened.store, opened.notice
    dark = theme.apply_theme(app, theme_name or settings.theme, settings.font_size)
    client = EngineClient(worker)
    session = ChatSession(store, client, settings)
    window = MainWindow(session, dark=dark)
    gui = Gui(app, store, client, session, window, notice)
    if notice:
        window.show_notice("warning", notice)
    elif store.recovered_messages:
        n = store.recovered_messages
        window.show_notice("info", f"{n} answer{'s were' if n > 1 else ' was'} cut off when "
                           "mixdesk last closed; the partial text is kept, marked interrupted.")

    def follow_system() -> None:
        if settings.theme == "system":
            window.apply_dark(theme.apply_theme(app, "system", settings.font_size))

    QGuiApplication.styleHints().colorSchemeChanged.connect(follow_system)
    client.probe()
    QTimer.singleShot(0, markdown.warm_up)  # parsers and lexers before the first answer
    return gui


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mixdesk gui", description="The mixdesk window.")
    parser.add_argument("--selftest", action="store_true",
                        help="offscreen: load a model, answer one prompt, exit 0 if all works")
    parser.add_argument("--model", help="model folder to load (selftest: instead of the demo)")
    parser.add_argument("--screenshot", type=Path, help="selftest: save the window as this PNG")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="selftest: seconds to allow for loading and answering")
    return parser.parse_args(argv or [])


def run(argv: list[str] | None = None, *, selftest: bool = False) -> int:
    """Run the app until its window closes; returns the exit code."""
    args = _parse(argv)
    if selftest or args.selftest:
        return run_selftest(args)
    log_path = setup_logging(logs_dir())
    install_excepthook(log_path)
    gui = build_gui()
    gui.app.aboutToQuit.connect(gui.shutdown)
    model = args.model or gui.session.settings.last_model
    if model and Path(model).is_dir():
        gui.session.load_model(model)
    gui.window.show()
    code = int(gui.app.exec())
    gui.shutdown()
    if gui.client.engine_thread.isRunning():
        # a model load cannot be interrupted; the chats are closed and safe, so leave
        # now instead of letting Qt abort on a running thread at interpreter exit
        log.warning("engine thread still busy at exit (a model load); exiting without it")
        logging.shutdown()
        os._exit(code)
    return code


def wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    """Run the event loop until `done()` or the timeout; True if done."""
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(20)
    deadline = time.monotonic() + timeout_s

    def check() -> None:
        if done() or time.monotonic() > deadline:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    if not done():
        loop.exec()
    timer.stop()
    return done()


def _selftest_model(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from mixdesk.engine.demo import ensure_demo  # noqa: PLC0415 - imports torch

    return ensure_demo(progress=lambda stage, f: print(f"selftest: demo {stage} {f:.0%}",
                                                       flush=True))


class SelftestFailure(Exception):
    """One sentence saying which selftest step failed."""


def _chat_once(gui: Gui, model: Path, args: argparse.Namespace) -> None:
    """Load `model`, answer one prompt, check the store; raise SelftestFailure if not."""
    session = gui.session
    session.load_model(model)
    if not wait_until(lambda: session.model_state in ("ready", "failed"), args.timeout):
        raise SelftestFailure(f"loading {model} took over {args.timeout:.0f} s")
    if session.model_state != "ready":
        raise SelftestFailure(f"loading {model}: {gui.window.banner.text()}")
    print(f"selftest: loaded {model} ({session.model_info})", flush=True)
    session.new_conversation()
    session.set_params(SamplingParams(temperature=0.0, max_new_tokens=24))
    finished: list[Any] = []
    errors: list[str] = []
    session.message_finished.connect(finished.append)
    session.notice.connect(lambda level, text: errors.append(text) if level == "error" else None)
    if not session.send(SELFTEST_PROMPT):
        raise SelftestFailure("the prompt was not accepted")
    if not wait_until(lambda: bool(finished or errors), args.timeout):
        raise SelftestFailure(f"no answer within {args.timeout:.0f} s")
    if errors:
        raise SelftestFailure(f"generation failed: {errors[0]}")
    answer = finished[0]
    if not answer.content.strip():
        raise SelftestFailure("the answer is empty")
    assert session.current is not None
    reopened = ChatStore(gui.store.path)
    on_disk = reopened.messages(session.current.id)
    reopened.close()
    if [(m.role, m.content) for m in on_disk] != [("user", SELFTEST_PROMPT),
                                                  ("assistant", answer.content)]:
        raise SelftestFailure("the conversation on disk does not match the window")
    stats = answer.stats or {}
    print(f"selftest: answer {answer.content.strip()[:80]!r} "
          f"({stats.get('generated_tokens')} tokens, {stats.get('decode_tps', 0):.1f} tok/s, "
          f"TTFT {stats.get('ttft_s', 0):.2f} s)", flush=True)
    if args.screenshot:
        QCoreApplication.processEvents()
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not gui.window.grab().save(str(args.screenshot)):
            raise SelftestFailure(f"could not save the screenshot to {args.screenshot}")
        print(f"selftest: screenshot {args.screenshot}", flush=True)


def run_selftest(args: argparse.Namespace) -> int:
    """Window offscreen, resources, a temp chat store, one real answer. 0 when all pass."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.monotonic()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mixdesk-selftest-") as tmp:
        app = application()
        gui: Gui | None = None
        try:
            problems = theme.check_resources()
            if problems:
                raise SelftestFailure("; ".join(problems))
            print("selftest: resources ok", flush=True)
            try:
                model = _selftest_model(args)
            except Exception as e:  # MixdeskError or not: the selftest reports, never raises
                raise SelftestFailure(f"no model to test with: {e}") from e
            settings = Settings(QSettings(str(Path(tmp) / "settings.ini"),
                                          QSettings.Format.IniFormat))
            settings.models_folder = model.parent
            store = ChatStore(Path(tmp) / "chats.sqlite3")
            gui = build_gui(store=store, settings=settings, theme_name="light", argv=[])
            gui.window.resize(1100, 720)
            gui.window.show()
            _chat_once(gui, model, args)
        except SelftestFailure as e:
            print(f"selftest: FAILED: {e}", file=sys.stderr, flush=True)
            return 1
        finally:
            if gui is not None:
                gui.window.close()
                gui.shutdown()
            app.processEvents()
    print(f"selftest: ok in {time.monotonic() - started:.1f} s", flush=True)
    return 0
