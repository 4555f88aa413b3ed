"""Python's cyclic garbage collector runs on the GUI thread only.

A collection runs on whichever thread happens to allocate. When it frees a cycle
that holds a Qt object, PySide6 deletes the C++ object on that thread, which
crashes when it is not the GUI thread. Seen in CI: a planner task on a background
thread (models page) allocated, the collector freed a cycle left by a closed
wizard, and the process died with a segmentation fault.

So while the app runs, automatic collection is off and a timer on the GUI thread
collects instead: the oldest generation whose count has passed its threshold, as
the automatic collector would. Reference counting still frees everything that is
not in a cycle at once, on any thread.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer, Slot

INTERVAL_MS = 250


class MainThreadCollector(QObject):
    """Turns automatic collection off and collects from a timer on this object's thread."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        self._threshold = gc.get_threshold()
        self.collections = 0
        gc.disable()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.collect_due)
        self._timer.start()

    @Slot()
    def collect_due(self) -> None:
        counts = gc.get_count()
        for generation in (2, 1, 0):
            if counts[generation] > self._threshold[generation]:
                gc.collect(generation)
                self.collections += 1
                return

    def stop(self) -> None:
        """Collect once more here, and give collection back to Python as it was."""
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()
