"""The first-run page: no model yet, so offer to build the demo (with progress)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui.statusbar import CPU_ONLY


class FirstRunPage(QWidget):
    """Shown while there is no model to chat with.

    Signals:
        build_demo_requested()
        choose_folder_requested()
    """

    build_demo_requested = Signal()
    choose_folder_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("FirstRun")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        headline = QLabel("Welcome to mixdesk")
        headline.setObjectName("Headline")
        intro = QLabel(
            "You have no model yet. mixdesk can build a small demo model right now: "
            "SmolLM2-135M-Instruct turned into an 8-expert mixture, about 1.4 GB on disk, "
            "built from files already on this computer. It is tiny, so expect simple "
            "answers; it shows how everything works before you download Mixtral.")
        intro.setWordWrap(True)
        self.hardware = QLabel("Detecting hardware…")
        self.hardware.setObjectName("Muted")
        self.hardware.setWordWrap(True)
        self.build_button = QPushButton("Build the demo model")
        self.build_button.setObjectName("PrimaryButton")
        self.build_button.clicked.connect(self.build_demo_requested)
        self.folder_button = QPushButton("Use a model folder…")
        self.folder_button.clicked.connect(self.choose_folder_requested)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.stage = QLabel()
        self.stage.setObjectName("Muted")
        self.stage.hide()
        self.where = QLabel()
        self.where.setObjectName("Muted")
        self.where.setWordWrap(True)
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        buttons = QHBoxLayout()
        buttons.addWidget(self.build_button)
        buttons.addWidget(self.folder_button)
        buttons.addStretch(1)
        column = QVBoxLayout()
        column.setSpacing(12)
        column.addWidget(headline)
        column.addWidget(intro)
        column.addWidget(self.hardware)
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.stage)
        column.addWidget(self.where)
        box = QWidget()
        box.setLayout(column)
        box.setMaximumWidth(560)
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(box, 10)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)

    def set_models_folder(self, folder: str) -> None:
        self.where.setText(f"Models live in {folder}. Any Hugging Face Mixtral, Mistral or "
                           "Llama folder placed there shows up in the model menu.")

    def set_hardware(self, gpu: str, vram_total: int | None, ram_total: int | None) -> None:
        ram = f"{ram_total / 1e9:.0f} GB of RAM" if ram_total else "RAM unknown"
        if gpu:
            vram = f" with {vram_total / 1e9:.1f} GB of VRAM" if vram_total else ""
            self.hardware.setText(f"Found {gpu}{vram} and {ram}.")
        else:
            self.hardware.setText(f"{CPU_ONLY}. The demo is small enough for that; "
                                  f"this computer has {ram}.")

    def set_building(self, building: bool) -> None:
        self.build_button.setEnabled(not building)
        self.folder_button.setEnabled(not building)
        self.progress.setVisible(building)
        self.stage.setVisible(building)
        if building:
            self.progress.setValue(0)
            self.stage.setText("Starting…")

    @Slot(str, float)
    def set_progress(self, stage: str, fraction: float) -> None:
        self.progress.setValue(int(1000 * max(0.0, min(1.0, fraction))))
        self.stage.setText(stage)
