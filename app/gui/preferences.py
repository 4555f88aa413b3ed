"""The preferences dialog: theme, font size, models folder."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from mixdesk.app.gui.settings import THEMES, Settings


class PreferencesDialog(QDialog):
    """Edits `Settings`; writes them only on OK."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
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
