"""The engine worker: one QObject on its own QThread owns the model.

The GUI thread never touches torch. It talks to the worker through
`EngineClient`, whose `*_requested` signals reach the worker's slots over
explicitly queued connections; the worker answers with signals the GUI
receives the same way. Stop does not go through the event loop (the worker is
busy inside the generation loop): it is a `threading.Event` per request that
`engine.generate` checks before every token.

The worker never writes into GUI-thread objects; everything it reports
travels as plain Python values in signals.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from mixdesk.engine.errors import MixdeskError
from mixdesk.engine.events import Done, Event, Failed, SamplingParams, Stats, Token

log = logging.getLogger("mixdesk.gui.worker")

BATCH_INTERVAL_S = 0.04  # tokens_streamed at most ~25 times a second, whatever the tok/s

LoadFn = Callable[[Path], Any]
GenerateFn = Callable[..., Iterator[Event]]


def default_load(path: Path) -> Any:
    """The front ends' shared loader: the GPU when there is one, else the CPU."""
    from mixdesk.engine.loader import open_model  # noqa: PLC0415 - torch loads on this thread

    return open_model(path, device="auto", dtype="auto")


def default_generate(lm: Any, prompt: Any, params: SamplingParams, *, chat: bool,
                     cancel: threading.Event) -> Iterator[Event]:
    from mixdesk.engine.generate import generate  # noqa: PLC0415

    return generate(lm, prompt, params, chat=chat, cancel=cancel)


def probe_hardware() -> dict[str, Any]:
    """GPU name and VRAM (when CUDA), and RAM. Imports torch: call it on the worker."""
    import psutil  # noqa: PLC0415

    info: dict[str, Any] = {"ram_total": psutil.virtual_memory().total}
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            info.update(gpu=torch.cuda.get_device_name(0), vram_total=total,
                        vram_used=total - free)
    except Exception:  # a broken CUDA install still lets the app run on the CPU
        log.exception("CUDA probe failed; running on the CPU")
    return info


def _vram_used() -> int | None:
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return int(total - free)
    return None


class EngineWorker(QObject):
    """Owns the LoadedModel and runs generation on its own thread.

    Attributes:
        model: the LoadedModel, or None. Touched only on the worker thread.
        batch_interval_s: how long tokens are gathered before one
            `tokens_streamed`.

    Signals:
        model_loaded(info: dict): name, path, device, context, vram_used.
        model_unloaded(): the model was dropped.
        load_failed(message: str, kind: str): a one-sentence reason.
        hardware_probed(info: dict): see `probe_hardware`.
        tokens_streamed(request_id: int, text: str, stats: dict): new answer text.
        finished(request_id: int, reason: str, text: str, stats: dict): the
            whole answer; reason is eos, stop, length or cancelled.
        failed(request_id: int, message: str, kind: str, partial: str): the
            answer failed; `partial` is the text streamed before it did.
    """

    model_loaded = Signal(object)
    model_unloaded = Signal()
    load_failed = Signal(str, str)
    hardware_probed = Signal(object)
    tokens_streamed = Signal(int, str, object)
    finished = Signal(int, str, str, object)
    failed = Signal(int, str, str, str)

    def __init__(
        self,
        *,
        load_fn: LoadFn = default_load,
        generate_fn: GenerateFn = default_generate,
        batch_interval_s: float = BATCH_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.model: Any = None
        self.batch_interval_s = batch_interval_s
        self._load_fn = load_fn
        self._generate_fn = generate_fn

    @Slot()
    def probe(self) -> None:
        self.hardware_probed.emit(probe_hardware())

    @Slot(str)
    def load(self, path: str) -> None:
        self.model = None  # free the old one first: two models rarely fit
        try:
            self.model = self._load_fn(Path(path))
        except MixdeskError as e:
            log.warning("load of %s failed: %s", path, e)
            self.load_failed.emit(str(e), type(e).__name__)
            return
        except Exception as e:  # a bug, but the window must live on
            log.exception("unexpected error loading %s", path)
            self.load_failed.emit(
                f"Loading {Path(path).name} failed with an internal error ({type(e).__name__}: "
                f"{e}); the log has the details.", "InternalError")
            return
        self.model_loaded.emit(self._model_info(path))

    def _model_info(self, path: str) -> dict[str, Any]:
        lm = self.model
        info: dict[str, Any] = {"path": str(path), "name": Path(path).name}
        for key in ("device", "dtype", "context"):
            value = getattr(lm, key, None)
            info[key] = value if isinstance(value, int | type(None)) else str(value)
        args = getattr(lm, "args", None)
        if args is not None:
            info["experts"] = getattr(args, "n_experts", 1)
            info["layers"] = getattr(args, "n_layers", 0)
        try:
            info["vram_used"] = _vram_used()
        except Exception:
            info["vram_used"] = None
        return info

    @Slot()
    def unload(self) -> None:
        self.model = None
        try:
            import torch  # noqa: PLC0415

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            log.exception("freeing CUDA memory failed")
        self.model_unloaded.emit()

    def _fit_context(self, messages: list[dict[str, str]], params: SamplingParams,
                     cancel: threading.Event) -> tuple[Iterator[Event], int]:
        """Start generating; if the history overflows the context, leave out the oldest
        exchanges (as chat apps do) until it fits. Returns the events and how many
        exchanges were left out."""
        dropped = 0
        events = iter(self._generate_fn(self.model, messages, params, chat=True, cancel=cancel))
        first = next(events, None)
        while isinstance(first, Failed) and first.kind == "ContextOverflowError":
            shorter = drop_oldest_turn(messages)
            if shorter is None:
                break
            messages, dropped = shorter, dropped + 1
            events = iter(self._generate_fn(self.model, messages, params, chat=True,
                                            cancel=cancel))
            first = next(events, None)
        if dropped:
            log.info("left out %d old exchange(s) to fit the context", dropped)
        return itertools.chain([first] if first is not None else [], events), dropped

    @Slot(int, object, object, object)
    def generate(self, request_id: int, messages: list[dict[str, str]],
                 params: SamplingParams, cancel: threading.Event) -> None:
        if self.model is None:
            self.failed.emit(request_id, "No model is loaded; choose one from the model menu.",
                             "NoModelError", "")
            return
        pending: list[str] = []
        streamed: list[str] = []
        stats: dict[str, Any] = {}
        last_emit = time.monotonic()

        def flush() -> None:
            nonlocal last_emit
            if pending:
                text = "".join(pending)
                streamed.append(text)
                pending.clear()
                self.tokens_streamed.emit(request_id, text, stats)
            last_emit = time.monotonic()

        try:
            events, dropped = self._fit_context(messages, params, cancel)
            for event in events:
                if isinstance(event, Token):
                    stats = asdict(event.stats)
                    if event.text:
                        pending.append(event.text)
                    if time.monotonic() - last_emit >= self.batch_interval_s:
                        flush()
                elif isinstance(event, Stats):
                    stats = asdict(event)
                elif isinstance(event, Done):
                    flush()
                    final = asdict(event.stats)
                    final["vram_used"] = _safe_vram()
                    if dropped:
                        final["dropped_turns"] = dropped
                    self.finished.emit(request_id, event.reason, event.text, final)
                    return
                elif isinstance(event, Failed):
                    flush()
                    self.failed.emit(request_id, event.message, event.kind,
                                     event.partial_text or "".join(streamed))
                    return
        except MixdeskError as e:
            flush()
            self.failed.emit(request_id, str(e), type(e).__name__, "".join(streamed))
            return
        except Exception as e:
            log.exception("unexpected error during generation")
            flush()
            self.failed.emit(
                request_id,
                f"Generation stopped on an internal error ({type(e).__name__}: {e}); "
                "the log has the details.",
                "InternalError", "".join(streamed))
            return
        flush()  # a generator that ends without Done: treat what came as the answer
        self.finished.emit(request_id, "eos", "".join(streamed), stats)


def drop_oldest_turn(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The history without its oldest exchange (a system prompt stays), or None.

    None when only the last message (the one to answer) is left besides the
    system prompt: there is nothing more to drop.
    """
    head = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(head):]
    if len(rest) <= 1:
        return None
    cut = 1
    if rest[0]["role"] == "user" and len(rest) > 2 and rest[1]["role"] == "assistant":
        cut = 2  # keep user/assistant alternation: drop the whole exchange
    return head + rest[cut:]


def _safe_vram() -> int | None:
    try:
        return _vram_used()
    except Exception:
        return None


class EngineClient(QObject):
    """The GUI thread's handle on the worker: starts its thread, sends requests, stops.

    Attributes:
        worker: the EngineWorker (lives on `thread`; connect to its signals).
        engine_thread: the QThread the worker runs on.
        busy: a generation is in flight.

    Signals:
        load_requested(path: str)
        unload_requested()
        probe_requested()
        generate_requested(request_id, messages, params, cancel)
    """

    load_requested = Signal(str)
    unload_requested = Signal()
    probe_requested = Signal()
    generate_requested = Signal(int, object, object, object)

    def __init__(self, worker: EngineWorker | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = worker or EngineWorker()
        self.engine_thread = QThread()
        self.engine_thread.setObjectName("mixdesk-engine")
        self.worker.moveToThread(self.engine_thread)
        queued = Qt.ConnectionType.QueuedConnection
        self.load_requested.connect(self.worker.load, queued)
        self.unload_requested.connect(self.worker.unload, queued)
        self.probe_requested.connect(self.worker.probe, queued)
        self.generate_requested.connect(self.worker.generate, queued)
        self.worker.finished.connect(self._on_finished, queued)
        self.worker.failed.connect(self._on_failed, queued)
        self._ids = itertools.count(1)
        self._cancels: dict[int, threading.Event] = {}
        self.engine_thread.start()

    @property
    def busy(self) -> bool:
        return bool(self._cancels)

    def load(self, path: str | Path) -> None:
        self.load_requested.emit(str(path))

    def unload(self) -> None:
        self.unload_requested.emit()

    def probe(self) -> None:
        self.probe_requested.emit()

    def generate(self, messages: list[dict[str, str]], params: SamplingParams) -> int:
        """Queue a chat generation; returns the request id the worker's signals carry."""
        request_id = next(self._ids)
        cancel = threading.Event()
        self._cancels[request_id] = cancel
        self.generate_requested.emit(request_id, messages, replace(params), cancel)
        return request_id

    def stop(self, request_id: int | None = None) -> None:
        """Stop one request (or all): the worker sees it before its next token."""
        for rid, cancel in self._cancels.items():
            if request_id is None or rid == request_id:
                cancel.set()

    @Slot(int, str, str, object)
    def _on_finished(self, request_id: int, _reason: str, _text: str, _stats: object) -> None:
        self._cancels.pop(request_id, None)

    @Slot(int, str, str, str)
    def _on_failed(self, request_id: int, _message: str, _kind: str, _partial: str) -> None:
        self._cancels.pop(request_id, None)

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Stop any generation, end the thread and wait for it. True if it ended."""
        self.stop()
        self.engine_thread.quit()
        ended = self.engine_thread.wait(timeout_ms)
        if not ended:
            log.error("engine thread did not end within %d ms", timeout_ms)
        self.worker.model = None
        return bool(ended)
