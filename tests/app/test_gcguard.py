"""app.gui.gcguard: cycles are collected on the GUI thread, never on a worker thread."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

from PySide6.QtCore import QObject

from mixdesk.app.gui.gcguard import MainThreadCollector


class _Cycle:
    def __init__(self) -> None:
        self.me = self
        self.qt = QObject()  # what must never be deleted off the GUI thread


def test_cycles_wait_for_the_gui_thread(qtbot: Any) -> None:
    assert not gc.isenabled()  # the autouse fixture runs one, as the app does
    collected_on: list[str] = []
    cycle = _Cycle()
    weakref.finalize(cycle, lambda: collected_on.append(threading.current_thread().name))
    del cycle

    kept: list[list[int]] = []

    def churn() -> None:  # a worker that allocates far past the collector's threshold
        kept.extend([i] for i in range(100_000))

    worker = threading.Thread(target=churn, name="worker")
    worker.start()
    worker.join()
    assert collected_on == []  # the worker's allocations collected nothing
    qtbot.waitUntil(lambda: collected_on == ["MainThread"], timeout=5_000)


def test_stop_gives_collection_back() -> None:
    was = gc.isenabled()
    gc.enable()
    collector = MainThreadCollector()
    assert not gc.isenabled()
    collector.stop()
    assert gc.isenabled()
    if not was:
        gc.disable()
