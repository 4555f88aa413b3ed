"""The Local server switch, its URL with a Copy button, and the request log (view only)."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui.localserver import LOG_SIZE, LocalServer


class LocalServerPanel(QWidget):
    """Widgets over a `LocalServer`; the switch acts at once (no OK needed).

    Attributes:
        switch: on = serve the loaded model on loopback.
        port: the port (0 = any free one), saved to settings; fixed while serving.
        url: the API root while serving, selectable; `copy` puts it on the clipboard.
        message: why the server failed or stopped, when it did.
        log_view: the last LOG_SIZE requests.
    """

    def __init__(self, server: LocalServer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.server = server
        self.switch = QCheckBox()
        self.port = QSpinBox()
        self.port.setRange(0, 65535)
        self.port.setSpecialValueText("any free port")
        self.port.setValue(server.settings.server_port)
        self.port.valueChanged.connect(self._port_changed)
        self.url = QLineEdit()
        self.url.setReadOnly(True)
        self.url.setPlaceholderText("Off")
        self.copy = QPushButton("Copy")
        self.copy.clicked.connect(self._copy)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.hide()
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_SIZE)
        self.log_view.setPlaceholderText("Requests to the server appear here.")
        self.log_view.setMinimumHeight(120)
        self.log_view.setPlainText("\n".join(server.lines))

        port_row = QHBoxLayout()
        port_row.addWidget(QLabel("Port"))
        port_row.addWidget(self.port)
        port_row.addStretch(1)
        url_row = QHBoxLayout()
        url_row.addWidget(self.url, 1)
        url_row.addWidget(self.copy)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.switch)
        column.addLayout(port_row)
        column.addLayout(url_row)
        column.addWidget(self.message)
        column.addWidget(QLabel("Requests"))
        column.addWidget(self.log_view, 1)

        self.switch.toggled.connect(self._toggled)
        server.state_changed.connect(self._on_state)
        server.record_added.connect(self.log_view.appendPlainText)
        self._on_state(server.state, server.url, "")

    def _switch_text(self) -> str:
        port = self.server.settings.server_port
        return f"Serve the loaded model on http://127.0.0.1:{port or 'PORT'}/v1"

    @Slot(int)
    def _port_changed(self, value: int) -> None:
        self.server.settings.server_port = value
        self.switch.setText(self._switch_text())

    @Slot(bool)
    def _toggled(self, on: bool) -> None:
        self.server.set_enabled(on)

    @Slot(str, str, str)
    def _on_state(self, state: str, url: str, message: str) -> None:
        self.switch.blockSignals(True)
        self.switch.setChecked(state in ("starting", "on"))
        self.switch.blockSignals(False)
        self.switch.setEnabled(state in ("off", "on"))
        self.switch.setText(f"Serve the loaded model on {url}" if url else self._switch_text())
        self.port.setEnabled(state == "off")
        self.url.setText(url)
        self.copy.setEnabled(bool(url))
        self.message.setText(message)
        self.message.setVisible(bool(message))

    @Slot()
    def _copy(self) -> None:
        clipboard = QGuiApplication.clipboard()
        if clipboard is not None and self.url.text():
            clipboard.setText(self.url.text())
