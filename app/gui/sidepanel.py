"""The conversation's side panel: system prompt and sampling parameters."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui.settings import DEFAULT_PARAMS
from mixdesk.engine.events import SamplingParams

EDIT_DELAY_MS = 400  # save the system prompt once typing pauses


class SidePanel(QWidget):
    """System prompt and sampling knobs of the open conversation.

    Signals:
        system_prompt_edited(text: str)
        params_edited(params: SamplingParams)
        save_default_requested(params: SamplingParams): make these the default for new chats.
    """

    system_prompt_edited = Signal(str)
    params_edited = Signal(object)
    save_default_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("SidePanel")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self._loading = False
        self._base = DEFAULT_PARAMS
        title = QLabel("Chat settings")
        title.setObjectName("SectionLabel")
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText("System prompt, e.g. “You are a concise assistant.”")
        self.system_prompt.setMinimumHeight(90)
        self._prompt_timer = QTimer(self)
        self._prompt_timer.setSingleShot(True)
        self._prompt_timer.setInterval(EDIT_DELAY_MS)
        self._prompt_timer.timeout.connect(self._emit_prompt)
        self.system_prompt.textChanged.connect(self._on_prompt_changed)

        self.temperature = self._double(0.0, 2.0, 0.05, 2, "0 = always the most likely token")
        self.top_p = self._double(0.05, 1.0, 0.05, 2, "1.0 turns nucleus sampling off")
        self.top_k = self._int(0, 1000, "0 turns top-k off")
        self.repetition_penalty = self._double(1.0, 2.0, 0.05, 2, "1.0 is off")
        self.max_tokens = self._int(1, 32768, "longest answer, in tokens")
        self.seed = self._int(-1, 2**31 - 1, "-1 = a fresh random seed each time")
        self.seed.setSpecialValueText("random")

        self._lay_out(title)

    def _lay_out(self, title: QLabel) -> None:
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k", self.top_k)
        form.addRow("Repetition penalty", self.repetition_penalty)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)

        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Back to your defaults for new chats")
        self.reset_button.clicked.connect(self._reset)
        self.default_button = QPushButton("Use for new chats")
        self.default_button.clicked.connect(
            lambda: self.save_default_requested.emit(self.params()))
        buttons = QHBoxLayout()
        buttons.addWidget(self.reset_button)
        buttons.addWidget(self.default_button)

        prompt_label = QLabel("System prompt")
        prompt_label.setObjectName("SectionLabel")
        params_label = QLabel("Sampling")
        params_label.setObjectName("SectionLabel")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.addWidget(title)
        layout.addWidget(prompt_label)
        layout.addWidget(self.system_prompt)
        layout.addWidget(params_label)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self.setMinimumWidth(250)

    def _double(self, lo: float, hi: float, step: float, decimals: int,
                tip: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(lo, hi)
        box.setSingleStep(step)
        box.setDecimals(decimals)
        box.setToolTip(tip)
        box.valueChanged.connect(self._on_param_changed)
        return box

    def _int(self, lo: int, hi: int, tip: str) -> QSpinBox:
        box = QSpinBox()
        box.setRange(lo, hi)
        box.setToolTip(tip)
        box.valueChanged.connect(self._on_param_changed)
        return box

    def load(self, system_prompt: str, params: SamplingParams, defaults: SamplingParams) -> None:
        """Show a conversation's settings without emitting edits.

        Call `flush` before switching conversations, so a pending prompt edit
        lands in the conversation it was typed for.
        """
        self._loading = True
        self._base = defaults
        editing = self._prompt_timer.isActive()  # the user is typing: their text wins
        try:
            if self.system_prompt.toPlainText() != system_prompt and not editing:
                self.system_prompt.setPlainText(system_prompt)
            self.temperature.setValue(params.temperature)
            self.top_p.setValue(params.top_p)
            self.top_k.setValue(params.top_k)
            self.repetition_penalty.setValue(params.repetition_penalty)
            self.max_tokens.setValue(params.max_new_tokens)
            self.seed.setValue(-1 if params.seed is None else params.seed)
        finally:
            self._loading = False

    def params(self) -> SamplingParams:
        seed = self.seed.value()
        return replace(
            self._base,
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repetition_penalty=self.repetition_penalty.value(),
            max_new_tokens=self.max_tokens.value(),
            seed=None if seed < 0 else seed,
        )

    def flush(self) -> None:
        """Emit a pending system prompt edit now (before sending)."""
        if self._prompt_timer.isActive():
            self._prompt_timer.stop()
            self._emit_prompt()

    @Slot()
    def _on_prompt_changed(self) -> None:
        if not self._loading:
            self._prompt_timer.start()

    @Slot()
    def _emit_prompt(self) -> None:
        self.system_prompt_edited.emit(self.system_prompt.toPlainText())

    @Slot()
    def _on_param_changed(self) -> None:
        if not self._loading:
            self.params_edited.emit(self.params())

    @Slot()
    def _reset(self) -> None:
        self.load(self.system_prompt.toPlainText(), self._base, self._base)
        self.params_edited.emit(self.params())
