"""The preferences dialog: theme, font size, models folder, and the Local server switch."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from mixdesk.app.gui.localserver import LocalServer
from mixdesk.app.gui.localserverview import LocalServerPanel
from mixdesk.app.gui.settings import THEMES, Settings


class PreferencesDialog(QDialog):
    """Edits `Settings`; writes them only on OK. The Local server switch acts at once.

    Attributes:
        server_panel: the Local server switch and log, when a `LocalServer` was given.
    """

    def __init__(self, settings: Settings, parent: QWidget | None = None,
                 local_server: LocalServer | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.settings = settings
        self.theme = QComboBox()
        for name in THEMES:
            self.theme.addItem(name.capitalize(), name)
        self.theme.setCurrentIndex(THEMES.index(settings.theme))
        self.font_size = QSpinBox()
        self.font_size.setRange(0, 48)
        self.font_size.setSpecialValueText("System")
        self.font_size.setSuffix(" pt")
        self.font_size.setValue(settings.font_size)
        self.folder = QLineEdit(str(settings.models_folder))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Theme", self.theme)
        form.addRow("Font size", self.font_size)
        form.addRow("Models folder", folder_row)
        self.server_panel: LocalServerPanel | None = None
        if local_server is not None:
            self.server_panel = LocalServerPanel(local_server)
            group = QGroupBox("Local server (OpenAI-compatible, this computer only)")
            QHBoxLayout(group).addWidget(self.server_panel)
            form.addRow(group)
        form.addRow(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Models folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def accept(self) -> None:
        self.settings.theme = str(self.theme.currentData())
        self.settings.font_size = self.font_size.value()
        if self.folder.text().strip():
            self.settings.models_folder = self.folder.text().strip()
        self.settings.sync()
        super().accept()
