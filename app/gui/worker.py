"""The engine worker: one QObject on its own QThread owns the model.

The GUI thread never touches torch. It talks to the worker through
`EngineClient`, whose `*_requested` signals reach the worker's slots over
explicitly queued connections; the worker answers with signals the GUI
receives the same way. Stop does not go through the event loop (the worker is
busy inside the generation loop): it is a `threading.Event` per request that
`engine.generate` checks before every token.

The worker never writes into GUI-thread objects; everything it reports
travels as plain Python values in signals.

The engine is either a local LoadedModel (`model`) or a `RemoteEngine`
(`remote`); both yield the same events. The "Local server" switch also lives
here, because it serves the worker's model: while it is on, the server's own
generation thread is the only one that runs the model, and the worker's chats
go through a `RemoteEngine` pointed at that server, so they wait in the same
queue as outside clients instead of running the model beside them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from mixdesk.engine.errors import MixdeskError, RemoteEngineError
from mixdesk.engine.events import Done, Event, Failed, SamplingParams, Stats, Token

if TYPE_CHECKING:  # both load lazily: the web server only when the switch is turned on
    from mixdesk.app.server import BackgroundServer
    from mixdesk.engine.remote import RemoteEngine

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
        remote: the RemoteEngine chats go to instead, or None.
        server: the Local server serving `model`, or None.
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
        remote_failed(message: str, kind: str): a remote model could not be used;
            the engine in use before is kept.
        server_started(url: str): the Local server answers at url.
        server_stopped(): the Local server stopped (switched off, or its model went).
        server_failed(message: str): the Local server could not start.
        request_served(record: RequestRecord): emitted from the server's thread.
    """

    model_loaded = Signal(object)
    model_unloaded = Signal()
    load_failed = Signal(str, str)
    hardware_probed = Signal(object)
    tokens_streamed = Signal(int, str, object)
    finished = Signal(int, str, str, object)
    failed = Signal(int, str, str, str)
    remote_failed = Signal(str, str)
    server_started = Signal(str)
    server_stopped = Signal()
    server_failed = Signal(str)
    request_served = Signal(object)

    def __init__(
        self,
        *,
        load_fn: LoadFn = default_load,
        generate_fn: GenerateFn = default_generate,
        batch_interval_s: float = BATCH_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.model: Any = None
        self.model_name = ""
        self.remote: RemoteEngine | None = None
        self.server: BackgroundServer | None = None
        self._via_server: RemoteEngine | None = None
        self.batch_interval_s = batch_interval_s
        self._load_fn = load_fn
        self._generate_fn = generate_fn

    @Slot()
    def probe(self) -> None:
        self.hardware_probed.emit(probe_hardware())

    @Slot(str)
    def load(self, path: str) -> None:
        self.close_server()
        self.drop_remote()
        self.model = None  # free the old one first: two models rarely fit
        try:
            self.model = self._load_fn(Path(path))
            self.model_name = Path(path).name
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

    @Slot(str, str, str)
    def use_remote(self, url: str, api_key: str, model: str) -> None:
        """Chat with `model` on the server at `url` from now on, if it answers.

        The server is asked for its models first; when that fails the engine in use
        stays (a dropped Wi-Fi must not unload a local model).
        """
        from mixdesk.engine.remote import RemoteEngine  # noqa: PLC0415 - only when used

        engine: RemoteEngine | None = None
        try:
            engine = RemoteEngine(url, api_key or None, model=model)
            served = engine.models()
            if model not in served:
                raise RemoteEngineError(f"{engine.base_url} no longer serves {model!r}; it "
                                        f"serves {', '.join(served) or 'no models'}")
        except MixdeskError as e:
            if engine is not None:
                engine.close()
            log.warning("remote model %s at %s: %s", model, url, e)
            self.remote_failed.emit(str(e), type(e).__name__)
            return
        self.close_server()
        self.drop_remote()
        self.model = None  # the remote model replaces the local one: free its memory
        self.remote = engine
        from mixdesk.app.gui.remotes import remote_path, server_host  # noqa: PLC0415

        self.model_loaded.emit({
            "path": remote_path(engine.base_url, model), "name": model,
            "device": server_host(engine.base_url), "context": engine.context_max.get(model),
            "remote": engine.base_url, "vram_used": None})

    def drop_remote(self) -> None:
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    @Slot(int)
    def start_server(self, port: int) -> None:
        """Serve the loaded local model on http://127.0.0.1:port/v1 (0: any free port)."""
        if self.server is not None:
            self.server_started.emit(self.server.url)
            return
        if self.model is None:
            self.server_failed.emit("Load a local model first: the server shares the model "
                                    "loaded in the app." if self.remote is None else
                                    "The model in use is remote; load a local model to serve "
                                    "it.")
            return
        from mixdesk.app.server import BackgroundServer, create_app  # noqa: PLC0415
        from mixdesk.engine.remote import RemoteEngine  # noqa: PLC0415

        try:
            app = create_app(self.model, model_id=self.model_name,
                             on_request=self.request_served.emit)
            server = BackgroundServer(app, host="127.0.0.1", port=port)  # loopback only
            url = server.start()
        except MixdeskError as e:
            self.server_failed.emit(str(e))
            return
        self.server = server
        self._via_server = RemoteEngine(url, model=self.model_name)
        log.info("serving %s on %s", self.model_name, url)
        self.server_started.emit(url)

    @Slot()
    def stop_server(self) -> None:
        self.close_server()

    def close_server(self) -> None:
        """Stop the Local server if it runs (any thread, once the worker is idle)."""
        server, self.server = self.server, None
        if self._via_server is not None:
            self._via_server.close()
            self._via_server = None
        if server is not None:
            server.stop()
            log.info("local server on %s stopped", server.url)
            self.server_stopped.emit()

    @Slot()
    def unload(self) -> None:
        self.close_server()
        self.drop_remote()
        self.model = None
        try:
            import torch  # noqa: PLC0415

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            log.exception("freeing CUDA memory failed")
        self.model_unloaded.emit()

    def _events(self, messages: list[dict[str, str]], params: SamplingParams,
                cancel: threading.Event) -> Iterator[Event]:
        engine = self._via_server or self.remote  # the server's queue runs the model now
        if engine is not None:
            return engine.generate(messages, params, chat=True, cancel=cancel)
        return self._generate_fn(self.model, messages, params, chat=True, cancel=cancel)

    def _fit_context(self, messages: list[dict[str, str]], params: SamplingParams,
                     cancel: threading.Event) -> tuple[Iterator[Event], int]:
        """Start generating; if the history overflows the context, leave out the oldest
        exchanges (as chat apps do) until it fits. Returns the events and how many
        exchanges were left out."""
        dropped = 0
        events = iter(self._events(messages, params, cancel))
        first = next(events, None)
        while isinstance(first, Failed) and first.kind == "ContextOverflowError":
            shorter = drop_oldest_turn(messages)
            if shorter is None:
                break
            messages, dropped = shorter, dropped + 1
            events = iter(self._events(messages, params, cancel))
            first = next(events, None)
        if dropped:
            log.info("left out %d old exchange(s) to fit the context", dropped)
        return itertools.chain([first] if first is not None else [], events), dropped

    @Slot(int, object, object, object)
    def generate(self, request_id: int, messages: list[dict[str, str]],
                 params: SamplingParams, cancel: threading.Event) -> None:
        if self.model is None and self.remote is None:
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
        remote_requested(url: str, api_key: str, model: str)
        server_start_requested(port: int)
        server_stop_requested()
    """

    load_requested = Signal(str)
    unload_requested = Signal()
    probe_requested = Signal()
    generate_requested = Signal(int, object, object, object)
    remote_requested = Signal(str, str, str)
    server_start_requested = Signal(int)
    server_stop_requested = Signal()

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
        self.remote_requested.connect(self.worker.use_remote, queued)
        self.server_start_requested.connect(self.worker.start_server, queued)
        self.server_stop_requested.connect(self.worker.stop_server, queued)
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

    def use_remote(self, url: str, api_key: str, model: str) -> None:
        self.remote_requested.emit(url, api_key, model)

    def start_server(self, port: int) -> None:
        self.server_start_requested.emit(port)

    def stop_server(self) -> None:
        self.server_stop_requested.emit()

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
        self.worker.close_server()  # the port is free when the app has quit
        self.worker.drop_remote()
        self.worker.model = None
        return bool(ended)
