"""A dismissible banner above the chat for errors and notices (never a traceback)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QSize, Qt, Slot
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui import theme


class Banner(QWidget):
    """One line of text with an optional action button and a close button.

    The widget is the banner with its margin, so a hidden banner takes no room.

    Attributes:
        level: "error", "warning" or "info" (styled by the frame's `level` property).
        frame: the styled box inside.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.frame = QFrame()
        self.frame.setObjectName("Banner")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(16, 8, 16, 0)
        outer.addWidget(self.frame)
        self.level = "info"
        self.icon = QLabel()
        self.label = QLabel()
        self.label.setObjectName("BannerText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action = QPushButton()
        self.action.hide()
        self.close_button = QToolButton()
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Dismiss")
        self.close_button.clicked.connect(self.hide)
        layout = QHBoxLayout(self.frame)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self._callback: Callable[[], None] | None = None
        self.action.clicked.connect(self._on_action)
        self.set_dark(False)
        self.hide()

    def set_dark(self, dark: bool) -> None:
        self.icon.setPixmap(theme.icon("warning", dark).pixmap(QSize(18, 18)))
        self.close_button.setIcon(theme.icon("close", dark))

    def show_message(self, level: str, text: str, action_text: str = "",
                     action: Callable[[], None] | None = None) -> None:
        self.level = level
        self.frame.setProperty("level", level)
        self.frame.style().unpolish(self.frame)
        self.frame.style().polish(self.frame)
        self.label.setText(text)
        self._callback = action
        self.action.setText(action_text)
        self.action.setVisible(bool(action_text and action))
        self.show()

    def text(self) -> str:
        return self.label.text()

    @Slot()
    def _on_action(self) -> None:
        if self._callback is not None:
            self.hide()
            self._callback()
