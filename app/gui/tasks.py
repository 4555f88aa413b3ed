"""Short background jobs (building the demo, exporting): one helper, Anki-style.

`run_in_background(task, on_done)` runs `task(progress)` on a Python thread.
`progress(stage, fraction)` may be called from the task; `on_progress` and
`on_done` run on the main thread through queued signals. Tasks never touch
widgets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

log = logging.getLogger("mixdesk.gui.tasks")

Progress = Callable[[str, float], None]


class BackgroundTask(QObject):
    """A job on a thread of its own, reporting back on the main thread.

    Signals:
        progressed(stage: str, fraction: float)
        done(result: object, error: object): error is the exception, or None.
    """

    progressed = Signal(str, float)
    done = Signal(object, object)

    def __init__(self, task: Callable[[Progress], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._task = task
        self._thread = threading.Thread(target=self._run, name="mixdesk-task", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            result = self._task(self.progressed.emit)
        except BaseException as e:  # reported to on_done, which decides how to show it
            log.warning("background task failed: %s", e, exc_info=True)
            self.done.emit(None, e)
            return
        self.done.emit(result, None)


_running: set[BackgroundTask] = set()  # keeps tasks alive until they report


def run_in_background(
    task: Callable[[Progress], Any],
    on_done: Callable[[Any, BaseException | None], None],
    on_progress: Callable[[str, float], None] | None = None,
) -> BackgroundTask:
    """Run `task(progress)` off the main thread; call `on_done(result, error)` on it."""
    job = BackgroundTask(task)
    queued = Qt.ConnectionType.QueuedConnection
    if on_progress is not None:
        job.progressed.connect(on_progress, queued)

    @Slot(object, object)
    def finish(result: Any, error: BaseException | None) -> None:
        _running.discard(job)
        on_done(result, error)

    job.done.connect(finish, queued)
    _running.add(job)
    job.start()
    return job
