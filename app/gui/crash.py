"""Crashes: log them with their traceback, and tell the user where the log is.

`install_excepthook` routes uncaught exceptions (on any thread) to the log
and, on the GUI thread, to a dialog that names the log file. A crash dialog
means a bug: user-facing failures are MixdeskErrors shown in the banner.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtWidgets import QApplication, QMessageBox

log = logging.getLogger("mixdesk.gui.crash")

LOG_NAME = "mixdesk-gui.log"


def setup_logging(folder: Path) -> Path:
    """Log to `folder/mixdesk-gui.log` (rotated at 2 MB, 3 kept); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_NAME
    handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


class CrashReporter(QObject):
    """Shows the crash dialog on the GUI thread, whichever thread crashed.

    Signals:
        crashed(summary: str, details: str)
    """

    crashed = Signal(str, str)

    def __init__(self, log_path: Path) -> None:
        super().__init__()
        self.log_path = log_path
        self.shown = 0
        self.crashed.connect(self._show, Qt.ConnectionType.QueuedConnection)

    def hook(self, kind: type[BaseException], value: BaseException,
             tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        details = "".join(traceback.format_exception(kind, value, tb))
        log.critical("uncaught exception\n%s", details)
        self.crashed.emit(f"{kind.__name__}: {value}", details)

    def thread_hook(self, args: threading.ExceptHookArgs) -> None:
        self.hook(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)

    @Slot(str, str)
    def _show(self, summary: str, details: str) -> None:
        self.shown += 1
        app = QApplication.instance()
        if app is None or QThread.currentThread() is not app.thread():
            return
        box = QMessageBox(QMessageBox.Icon.Critical, "mixdesk hit a bug",
                          "Something went wrong inside mixdesk. Your chats are saved.\n\n"
                          f"{summary}\n\nThe details are in {self.log_path}; please attach "
                          "that file to a bug report.")
        box.setDetailedText(details)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.exec()


def install_excepthook(log_path: Path) -> CrashReporter:
    reporter = CrashReporter(log_path)
    sys.excepthook = reporter.hook
    threading.excepthook = reporter.thread_hook
    return reporter
