"""The message box: Enter sends, Shift+Enter adds a line, the button turns into Stop."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QPlainTextEdit, QPushButton, QWidget

MAX_LINES = 8


class ComposerEdit(QPlainTextEdit):
    """Plain text input that sends on Enter.

    Signals:
        send_pressed(): Enter without Shift.
    """

    send_pressed = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.send_pressed.emit()
            return
        super().keyPressEvent(event)


class Composer(QFrame):
    """Where the user types.

    Signals:
        submitted(text: str): the user sent this text.
        stop_requested(): the user pressed Stop.
    """

    submitted = Signal(str)
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Composer")
        self.edit = ComposerEdit()
        self.edit.setObjectName("ComposerEdit")
        self.edit.setPlaceholderText("Type a message… (Enter sends, Shift+Enter new line)")
        self.edit.setTabChangesFocus(True)
        self.edit.send_pressed.connect(self._on_send)
        self.edit.textChanged.connect(self._fit)
        self.button = QPushButton("Send")
        self.button.setObjectName("SendButton")
        self.button.setIconSize(QSize(16, 16))
        self.button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.button.clicked.connect(self._on_button)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignBottom)
        self.busy = False
        self.dark = False
        self._fit()
        self.set_busy(False)

    def set_dark(self, dark: bool) -> None:
        self.dark = dark
        self.set_busy(self.busy)

    def set_busy(self, busy: bool) -> None:
        """While an answer streams the button is Stop (Esc works too)."""
        self.busy = busy
        self.button.setText("Stop" if busy else "Send")
        self.button.setToolTip("Stop the answer (Esc)" if busy else "Send (Enter)")
        self.button.setProperty("stopping", busy)
        style = self.button.style()
        style.unpolish(self.button)
        style.polish(self.button)

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)

    @Slot()
    def _on_send(self) -> None:
        if self.busy:
            return
        text = self.edit.toPlainText()
        if text.strip():
            self.submitted.emit(text)

    @Slot()
    def _on_button(self) -> None:
        if self.busy:
            self.stop_requested.emit()
        else:
            self._on_send()

    def clear(self) -> None:
        self.edit.clear()

    @Slot()
    def _fit(self) -> None:
        lines = max(1, min(MAX_LINES, self.edit.document().blockCount()))
        height = self.edit.fontMetrics().lineSpacing() * lines + 14
        self.edit.setFixedHeight(max(height, 38))
