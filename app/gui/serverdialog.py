""""Add a server…": URL, optional API key, Test connection (lists its models)."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from mixdesk.app.gui.remotes import RemoteServer
from mixdesk.app.gui.tasks import run_in_background

log = logging.getLogger("mixdesk.gui.serverdialog")


def as_sentence(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def list_server_models(url: str, api_key: str) -> tuple[str, list[str]]:
    """The normalized API root and its model ids (network: call it off the GUI thread)."""
    from mixdesk.engine.remote import RemoteEngine  # noqa: PLC0415 - only when used

    with RemoteEngine(url, api_key or None, connect_timeout=5.0, read_timeout=15.0) as engine:
        return engine.base_url, engine.models()


class AddServerDialog(QDialog):
    """Asks for a server and checks it; OK is enabled once a test succeeded.

    Attributes:
        server: the tested server (with its models), or None.

    Signals:
        tested(ok: bool, text: str): a connection test ended; text is what the
            dialog shows (the models, or the error as a sentence).
    """

    tested = Signal(bool, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add a server")
        self.server: RemoteServer | None = None
        self._job: Any = None
        self.url = QLineEdit()
        self.url.setPlaceholderText("http://127.0.0.1:8080/v1")
        self.api_key = QLineEdit()
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setPlaceholderText("optional; stored in mixdesk's settings file")
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.outcome = QLabel("Any OpenAI-compatible server: mixdesk serve, vLLM, llama.cpp…")
        self.outcome.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setEnabled(False)
        self.url.textEdited.connect(self._edited)
        self.api_key.textEdited.connect(self._edited)
        form = QFormLayout(self)
        form.addRow("URL", self.url)
        form.addRow("API key", self.api_key)
        form.addRow("", self.test_button)
        form.addRow(self.outcome)
        form.addRow(self.buttons)

    def _edited(self) -> None:
        self.server = None  # a changed URL or key needs a new test
        self.ok_button.setEnabled(False)

    def test_connection(self) -> None:
        url, key = self.url.text().strip(), self.api_key.text().strip()
        if not url:
            self._report(False, "Write the server's URL, e.g. http://127.0.0.1:8080/v1.")
            return
        self.test_button.setEnabled(False)
        self.outcome.setText(f"Connecting to {url}…")

        def done(result: Any, error: BaseException | None) -> None:
            self._job = None
            self.test_button.setEnabled(True)
            if error is not None:
                self._report(False, as_sentence(error))
                return
            base_url, models = result
            if not models:
                self._report(False, f"{base_url} answers but serves no models.")
                return
            self.server = RemoteServer(base_url, key, tuple(models))
            self._report(True, f"Connected. Models: {', '.join(models)}.")

        self._job = run_in_background(lambda _progress: list_server_models(url, key), done)

    def _report(self, ok: bool, text: str) -> None:
        self.outcome.setText(text)
        self.ok_button.setEnabled(ok)
        self.tested.emit(ok, text)
