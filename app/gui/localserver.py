"""The "Local server" switch: its state and its request log (logic, no widgets).

The server itself runs beside the engine worker (see `worker.py`), because it
serves the worker's model. This object lives on the GUI thread: it asks the
worker to start or stop the server and keeps the last `LOG_SIZE` requests. The
server reports each request from its own thread; the record reaches this
object through a queued signal, so the log is only ever touched here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

from mixdesk.app.gui.settings import Settings
from mixdesk.app.gui.worker import EngineClient

log = logging.getLogger("mixdesk.gui.localserver")

LOG_SIZE = 200  # requests kept in the log; older ones scroll away


def format_record(record: Any, wall_time: float) -> str:
    """One log line for a `RequestRecord` (`wall_time` is when it ended, time.time())."""
    parts = [time.strftime("%H:%M:%S", time.localtime(wall_time)),
             f"{record.method} {record.path}", str(record.status)]
    if record.stream:
        parts.append("stream")
    if record.prompt_tokens or record.completion_tokens:
        parts.append(f"{record.prompt_tokens} → {record.completion_tokens} tokens")
    if record.finish_reason:
        parts.append(record.finish_reason)
    parts.append(f"{record.seconds:.2f} s")
    return "  ".join(parts)


class LocalServer(QObject):
    """Turns the worker's local server on and off and keeps its request log.

    Attributes:
        state: "off", "starting", "on" or "stopping".
        url: the API root while on (e.g. http://127.0.0.1:8080/v1), else "".
        lines: the request log, oldest first, at most LOG_SIZE lines.

    Signals:
        state_changed(state: str, url: str, message: str): message says why it failed
            or stopped on its own, else "".
        record_added(line: str): a request was answered.
    """

    state_changed = Signal(str, str, str)
    record_added = Signal(str)

    def __init__(self, client: EngineClient, settings: Settings,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.settings = settings
        self.state = "off"
        self.url = ""
        self.lines: deque[str] = deque(maxlen=LOG_SIZE)
        queued = Qt.ConnectionType.QueuedConnection
        worker = client.worker
        worker.server_started.connect(self._on_started, queued)
        worker.server_stopped.connect(self._on_stopped, queued)
        worker.server_failed.connect(self._on_failed, queued)
        worker.request_served.connect(self._on_record, queued)  # from the server's thread

    def set_enabled(self, on: bool) -> None:
        """Start the server on the port in settings, or stop it."""
        if on and self.state in ("off",):
            self._set_state("starting")
            self.client.start_server(self.settings.server_port)
        elif not on and self.state in ("starting", "on"):
            self._set_state("stopping")
            self.client.stop_server()  # after the answer in flight, if the worker is busy

    def _set_state(self, state: str, message: str = "") -> None:
        self.state = state
        self.state_changed.emit(state, self.url, message)

    @Slot(str)
    def _on_started(self, url: str) -> None:
        self.url = url
        self._set_state("on")

    @Slot()
    def _on_stopped(self) -> None:
        was_on = self.state == "on"
        self.url = ""
        # stopped without being asked: the model it served was unloaded or replaced
        self._set_state("off", "The local server stopped: its model was unloaded."
                        if was_on else "")

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.url = ""
        self._set_state("off", message)

    @Slot(object)
    def _on_record(self, record: Any) -> None:
        ended = time.time() - max(0.0, time.monotonic() - record.finished_at)
        line = format_record(record, ended)
        self.lines.append(line)
        self.record_added.emit(line)
