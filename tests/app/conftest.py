"""GUI test helpers: a window on a temp store and settings, a scripted fake engine.

The fake engine stands in for torch where a test is about the GUI's own
behaviour (timing, stop, regenerate); tests about real answers use the
`tiny_mixtral` fixture with the real loader and generator.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mixdesk.engine.errors import ModelFormatError
from mixdesk.engine.events import Done, Event, SamplingParams, Stats, Token

if TYPE_CHECKING:  # Qt loads only in the tests that build a window (not the server's)
    from mixdesk.app.gui.app import Gui
    from mixdesk.app.gui.settings import Settings
    from mixdesk.app.gui.worker import EngineWorker

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

WORDS = ("Start ", "with ", "a ", "chassis, ", "then ", "the ", "engine. ")


@dataclass
class FakeLM:
    path: Path
    context: int = 2048
    device: str = "cpu"
    dtype: str = "float32"
    args: Any = None


@dataclass
class FakeEngine:
    """A scripted engine: words at `tps` tokens a second, honouring cancel per token.

    Attributes:
        prompts: every prompt it was asked to answer.
        after_cancel: per request, tokens yielded after cancel was already set.
        on_start: called on the worker thread with the prompt before the first token.
        answer: if set, the exact text (one token per character) instead of WORDS.
    """

    tps: float = 2000.0
    answer: str | None = None
    tokens: list[str] | None = None  # the answer as these tokens (wins over `answer`)
    prompts: list[Any] = field(default_factory=list)
    after_cancel: list[int] = field(default_factory=list)
    on_start: Callable[[Any], None] | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def load(self, path: Path) -> FakeLM:
        if not (path / "config.json").is_file():
            raise ModelFormatError(f"{path} has no config.json; it is not a model folder")
        return FakeLM(path)

    def generate(self, lm: FakeLM, prompt: Any, params: SamplingParams, *, chat: bool,
                 cancel: threading.Event) -> Iterator[Event]:
        assert chat
        self.prompts.append(prompt)
        if self.on_start is not None:
            self.on_start(prompt)
        if self.tokens is not None:
            pieces = list(self.tokens)
        elif self.answer is not None:
            pieces = list(self.answer)
        else:
            pieces = [WORDS[i % len(WORDS)] for i in range(params.max_new_tokens)]
        pieces = pieces[:params.max_new_tokens]
        text, late, t0 = "", 0, time.perf_counter()
        self.after_cancel.append(0)
        self.started.set()

        def stats(n: int) -> Stats:
            return Stats(prompt_tokens=7, generated_tokens=n, ttft_s=0.01, prefill_tps=700.0,
                         decode_tps=n / max(1e-6, time.perf_counter() - t0),
                         context_used=7 + n, context_max=lm.context)

        for i, piece in enumerate(pieces):
            if cancel.is_set():
                yield Done("cancelled", text, tuple(range(i)), stats(i))
                return
            time.sleep(1.0 / self.tps)
            text += piece
            if cancel.is_set():
                late += 1
                self.after_cancel[-1] = late
            yield Token(i, piece, stats(i + 1))
        scripted = self.answer is not None or self.tokens is not None
        yield Done("eos" if scripted else "length", text,
                   tuple(range(len(pieces))), stats(len(pieces)))


@pytest.fixture(autouse=True)
def _collect_on_the_gui_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """As the app does (`app.gui.gcguard`): no garbage collection on worker threads."""
    from mixdesk.app.gui.gcguard import MainThreadCollector  # noqa: PLC0415

    request.getfixturevalue("qapp")  # the collector's timer needs the QApplication

    collector = MainThreadCollector()
    yield
    collector.stop()
    collector.deleteLater()


@pytest.fixture
def fake_model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "fake-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "mixtral", "num_local_experts": 4}')
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    from PySide6.QtCore import QSettings  # noqa: PLC0415

    from mixdesk.app.gui.settings import Settings  # noqa: PLC0415

    s = Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    s.models_folder = tmp_path / "models"
    return s


@pytest.fixture
def make_gui(qtbot: Any, tmp_path: Path, settings: Settings) -> Iterator[Callable[..., Gui]]:
    """Build a window on tmp_path/chats.sqlite3; every one built is shut down after."""
    from mixdesk.app.gui.app import build_gui  # noqa: PLC0415
    from mixdesk.app.gui.worker import EngineWorker  # noqa: PLC0415
    from mixdesk.engine.chats import ChatStore  # noqa: PLC0415

    built: list[Gui] = []

    def make(*, engine: FakeEngine | None = None, worker: EngineWorker | None = None,
             db: Path | None = None, theme_name: str = "light") -> Gui:
        if engine is not None:
            worker = EngineWorker(load_fn=engine.load, generate_fn=engine.generate)
        store = ChatStore(db or tmp_path / "chats.sqlite3")
        gui = build_gui(store=store, settings=settings, worker=worker, theme_name=theme_name)
        qtbot.addWidget(gui.window)
        gui.window.resize(1000, 700)
        gui.window.show()
        gui.window.activateWindow()  # window shortcuts (Ctrl+N, Esc) need an active window
        qtbot.waitUntil(gui.window.isActiveWindow, timeout=5_000)
        built.append(gui)
        return gui

    yield make
    for gui in built:
        gui.shutdown()


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def ready(make_gui: Callable[..., Gui], fake_engine: FakeEngine, fake_model_dir: Path,
          load_model: Callable[..., None]) -> Gui:
    """A window on the fake engine with the fake model loaded."""
    gui = make_gui(engine=fake_engine)
    load_model(gui, fake_model_dir)
    return gui


@pytest.fixture
def load_model(qtbot: Any) -> Callable[..., None]:
    """load_model(gui, path): load and wait until the worker says ready (or failed)."""

    def load(gui: Gui, path: Path, *, expect: str = "ready", timeout: int = 60_000) -> None:
        with qtbot.waitSignal(gui.session.model_state_changed, timeout=timeout,
                              check_params_cb=lambda state, _info: state in ("ready", "failed")):
            gui.session.load_model(path)
        assert gui.session.model_state == expect, gui.window.banner.text()

    return load
