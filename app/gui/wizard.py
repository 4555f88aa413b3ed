"""The quantize wizard: from a model (or a hub id) to a Mixtral sized to your VRAM.

Pages:
    1. Source: a downloaded model, a local folder, or a hub id (checked on the hub).
    2. Budget: a VRAM slider and the context; a live plan (stacked bar of where the
       bytes go, predicted tok/s, fidelity) and per-module overrides.
    3. Confirm: the output folder, the disk check, a time estimate.
    4. Run: download (hub ids), then quantize, with progress, cancel and resume.
    5. Finish: open it in chat.

Every planner call, hub call and the job itself run through
`tasks.run_in_background` (the planner imports torch; the GUI thread never does).
What the pages learn is kept on the wizard (`QuantizeWizard.state`).
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from mixdesk.app.gui.models import LocalModel, human_bytes
from mixdesk.app.gui.statusbar import CPU_ONLY
from mixdesk.app.gui.tasks import BackgroundTask, run_in_background
from mixdesk.engine.errors import GatedRepoError, JobCancelled, MixdeskError

log = logging.getLogger("mixdesk.gui.wizard")

SOURCE_PAGE, BUDGET_PAGE, CONFIRM_PAGE, RUN_PAGE, FINISH_PAGE = range(5)
CPU_DEFAULT_BUDGET_GB = 16.0  # no GPU here: plan for a common 16 GB card
MAX_BUDGET_GB_NO_GPU = 96.0
DISK_MARGIN = 64 * 10**6  # as engine.qformat keeps: manifest, tokenizer, file-system slack
PLAN_DEBOUNCE_MS = 120
BAR_COLORS = {  # VRAM breakdown keys of engine.budget.Plan, and the host part
    "weights": "#4c6ef5", "meta": "#15aabf", "kernel copy": "#7950f2", "kv cache": "#f59f00",
    "activations": "#e8590c", "workspace": "#d6336c", "cuda context": "#868e96",
    "expert cache": "#40c057", "host": "#adb5bd",
}
BITS_CHOICES = (2, 3, 4, 8)
GROUP_CHOICES = (8, 16, 32, 64, 128)


def error_text(error: BaseException, doing: str) -> str:
    """One sentence for the page: a MixdeskError's own, else a bug pointing at the log."""
    if isinstance(error, MixdeskError):
        return str(error)
    return (f"{doing} failed with an internal error ({type(error).__name__}: {error}); "
            "the log has the details.")


def sentence(text: str) -> str:
    """`text` with a capital first letter (engine messages start lower-case)."""
    return text[:1].upper() + text[1:]


def disk_free(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass
class WizardState:
    """What the pages have learned so far.

    Attributes:
        kind: "local" (a downloaded model), "folder" or "hub".
        source: the source folder (local, folder; hub after download).
        hub_id: the hub id (kind "hub").
        token: a hub token typed in the wizard, or None.
        label: the model's name for titles and the default output folder.
        config: the source's config.json (hub sources: fetched alone).
        source_bytes: bytes of weights to read (and, for hub ids, to download).
        gpu: the engine.budget.GpuInfo, or None (no GPU).
        plan: the engine.budget.Plan chosen on the budget page.
        budget_gb, context: the budget page's values.
        output: the output folder.
        result: the finished quantized folder.
    """

    kind: str = "local"
    source: Path | None = None
    hub_id: str = ""
    token: str | None = None
    label: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    source_bytes: int = 0
    gpu: Any = None
    gpu_known: bool = False
    plan: Any = None
    budget_gb: float = 0.0
    context: int = 4096
    output: Path | None = None
    result: Path | None = None


class Message(QLabel):
    """A wrapped line that shows an error (red), a warning or a note."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.level = ""
        self.hide()

    def show_text(self, level: str, text: str) -> None:
        self.level = level
        color = {"error": "#c92a2a", "warning": "#9a5b00"}.get(level, "")
        self.setStyleSheet(f"color: {color};" if color else "")
        self.setText(text)
        self.setVisible(bool(text))

    def clear_text(self) -> None:
        self.level = ""
        self.setText("")
        self.hide()


# ---------------------------------------------------------------------------- 1. source


class SourcePage(QWizardPage):
    """A downloaded model, a local folder, or a hub id; checked before Next."""

    def __init__(self, wizard: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("What to quantize")
        self.setSubTitle("An unquantized model in the Hugging Face layout (config.json and "
                         "safetensors shards): one you downloaded, a folder, or a hub id.")
        self.local_radio = QRadioButton("A downloaded model")
        self.folder_radio = QRadioButton("A model folder on this computer")
        self.hub_radio = QRadioButton("A model on the Hugging Face hub")
        self.group = QButtonGroup(self)
        for i, radio in enumerate((self.local_radio, self.folder_radio, self.hub_radio)):
            self.group.addButton(radio, i)
        self.local_combo = QComboBox()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("/path/to/Mixtral-8x7B-Instruct-v0.1")
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("mistralai/Mixtral-8x7B-Instruct-v0.1")
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("hf_… (only for gated models such as mistralai's)")
        self.save_token = QCheckBox("Remember the token (huggingface_hub's token store)")
        self.message = Message()

        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.browse)
        grid = QGridLayout(self)
        grid.setColumnMinimumWidth(0, 24)
        grid.addWidget(self.local_radio, 0, 0, 1, 2)
        grid.addWidget(self.local_combo, 1, 1)
        grid.addWidget(self.folder_radio, 2, 0, 1, 2)
        grid.addLayout(folder_row, 3, 1)
        grid.addWidget(self.hub_radio, 4, 0, 1, 2)
        grid.addWidget(self.hub_edit, 5, 1)
        token_form = QFormLayout()
        token_form.addRow("Hub token:", self.token_edit)
        token_form.addRow("", self.save_token)
        grid.addLayout(token_form, 6, 1)
        grid.addWidget(self.message, 7, 0, 1, 2)
        grid.setRowStretch(8, 1)
        self.group.idToggled.connect(self._on_kind)
        for edit in (self.folder_edit, self.hub_edit):
            edit.textChanged.connect(self._changed)
        self.local_combo.currentIndexChanged.connect(self._changed)
        self._checked_key: tuple[tuple[str, str], str | None] | None = None  # (key, token)
        self._checking: BackgroundTask | None = None

    def set_models(self, models: list[LocalModel], preselect: Path | None) -> None:
        self.local_combo.clear()
        for m in models:
            self.local_combo.addItem(f"{m.name} · {human_bytes(m.size_bytes)}", str(m.path))
        if preselect is not None:
            index = self.local_combo.findData(str(preselect))
            if index >= 0:
                self.local_combo.setCurrentIndex(index)
                self.local_radio.setChecked(True)
            else:
                self.folder_edit.setText(str(preselect))
                self.folder_radio.setChecked(True)
        elif models:
            self.local_radio.setChecked(True)
        else:
            self.local_radio.setEnabled(False)
            self.local_combo.setEnabled(False)
            self.local_combo.addItem("No unquantized model downloaded yet")
            self.hub_radio.setChecked(True)
        self._on_kind()

    def kind(self) -> str:
        return ("local", "folder", "hub")[max(0, self.group.checkedId())]

    def key(self) -> tuple[str, str]:
        kind = self.kind()
        if kind == "local":
            return kind, str(self.local_combo.currentData() or "")
        if kind == "folder":
            return kind, self.folder_edit.text().strip()
        return kind, self.hub_edit.text().strip().strip("/")

    @Slot()
    def _on_kind(self) -> None:
        kind = self.kind()
        self.local_combo.setEnabled(kind == "local" and self.local_radio.isEnabled())
        self.folder_edit.setEnabled(kind == "folder")
        self.browse.setEnabled(kind == "folder")
        self.hub_edit.setEnabled(kind == "hub")
        self.token_edit.setEnabled(kind == "hub")
        self.save_token.setEnabled(kind == "hub")
        self._changed()

    @Slot()
    def _changed(self) -> None:
        if self._checking is None:
            self.message.clear_text()
        self.completeChanged.emit()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder",
                                                  str(self.wiz.models_folder))
        if folder:
            self.folder_edit.setText(folder)

    def isComplete(self) -> bool:
        return bool(self.key()[1]) and self._checking is None

    def validatePage(self) -> bool:
        """Next checks the source off the GUI thread; the check's end moves on by itself."""
        key = self.key()
        if self._checked_key == (key, self.token_edit.text().strip() or None):
            return True
        if self._checking is not None:
            return False
        self._start_check(key)
        return False

    def _start_check(self, key: tuple[str, str]) -> None:
        kind, value = key
        token = self.token_edit.text().strip() or None
        remember = self.save_token.isChecked()
        if kind == "hub" and ("/" not in value or value.count("/") > 1 or " " in value):
            self.message.show_text("error", f"“{value}” is not a hub id; a hub id looks like "
                                   "mistralai/Mixtral-8x7B-Instruct-v0.1.")
            return
        self.message.show_text("note", "Checking the hub…" if kind == "hub" else
                               "Reading the model folder…")
        check = self.wiz.check_source

        def done(result: Any, error: BaseException | None) -> None:
            self._checking = None
            self.completeChanged.emit()
            if error is not None:
                text = error_text(error, "Checking the source")
                if isinstance(error, GatedRepoError):
                    text += ". Here: paste the token into the Hub token field and press Next."
                self.message.show_text("error", text)
                return
            self.message.clear_text()
            state = self.wiz.state
            state.kind = kind
            state.token = token
            state.config, state.source_bytes, state.label = result["config"], \
                result["bytes"], result["label"]
            state.source = None if kind == "hub" else Path(value)
            state.hub_id = value if kind == "hub" else ""
            state.plan = None
            self._checked_key = (key, token)
            self.wiz.next()

        self._checking = self.wiz.background(lambda _p: check(kind, value, token, remember),
                                             done)
        self.completeChanged.emit()


def check_source(kind: str, value: str, token: str | None, remember: bool) -> dict[str, Any]:
    """Runs off the GUI thread: what the source is, or a MixdeskError saying what is wrong.

    Returns:
        {"config": config.json, "bytes": weight bytes, "label": a name}.
    """
    from mixdesk.engine.config import ModelArgs  # noqa: PLC0415
    from mixdesk.engine.errors import ModelFormatError  # noqa: PLC0415

    if kind == "hub":
        from mixdesk.engine.hub import remote_config, remote_files, save_token  # noqa: PLC0415

        if remember and token:
            save_token(token)
        config = remote_config(value, token=token)
        ModelArgs.from_hf_config(config, source=f"{value}/config.json")
        _commit, files = remote_files(value, token=token)
        return {"config": config, "bytes": sum(f.size for f in files),
                "label": value.rsplit("/", 1)[-1]}
    import json  # noqa: PLC0415

    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: no such folder")
    if (folder / "manifest.json").is_file():
        raise ModelFormatError(f"{folder.name} is already quantized (a mixdesk model): chat "
                               "with it from the models page, or pick its unquantized source")
    if not (folder / "config.json").is_file():
        raise ModelFormatError(f"{folder}: no config.json, so this is not a model folder; "
                               "pick the folder that holds config.json and the safetensors "
                               "shards")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelFormatError(f"{folder}: no safetensors weights; mixdesk quantizes "
                               "safetensors checkpoints (download the model with mixdesk)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{folder / 'config.json'}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{folder / 'config.json'}: not a JSON object")
    ModelArgs.from_folder(folder)  # an unsupported architecture says so here
    return {"config": config, "bytes": sum(p.stat().st_size for p in shards),
            "label": folder.name}


# ---------------------------------------------------------------------------- 2. budget


class BudgetBar(QWidget):
    """A stacked bar: where every byte of the plan goes, the budget marked.

    Attributes:
        segments: (name, bytes, colour) on the GPU.
        host: bytes in pinned host memory (drawn after a gap).
        budget: the budget in bytes (a marker line).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.segments: list[tuple[str, int, str]] = []
        self.host = 0
        self.budget = 0
        self.setMinimumHeight(30)

    def sizeHint(self) -> QSize:
        return QSize(480, 30)

    def set_plan(self, vram: dict[str, int], host: int, budget: int) -> None:
        self.segments = [(k, v, BAR_COLORS.get(k, "#868e96")) for k, v in vram.items() if v > 0]
        self.host, self.budget = host, budget
        self.update()

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        total = sum(v for _, v, _ in self.segments)
        scale_to = max(total + self.host, self.budget, 1)
        width, height = self.width() - 2, self.height() - 8
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(self.palette().color(self.backgroundRole()).darker(108)))
        painter.drawRoundedRect(QRectF(1, 4, width, height), 4, 4)
        x = 1.0
        for _name, nbytes, color in self.segments:
            w = width * nbytes / scale_to
            painter.setBrush(QColor(color))
            painter.drawRect(QRectF(x, 4, max(w, 1.0), height))
            x += w
        if self.host:
            w = width * self.host / scale_to
            brush = QColor(BAR_COLORS["host"])
            painter.setBrush(brush)
            painter.drawRect(QRectF(x + 3, 4, max(w - 3, 1.0), height))
        if self.budget:
            bx = 1 + width * self.budget / scale_to
            painter.setPen(QColor("#c92a2a") if total > self.budget else QColor("#2b8a3e"))
            painter.drawLine(int(bx), 0, int(bx), self.height())
        painter.end()


class BudgetPage(QWizardPage):
    """The signature screen: a VRAM slider, the context, and the live plan."""

    def __init__(self, wizard: QuantizeWizard) -> None:  # noqa: PLR0915 - widgets, laid out
        super().__init__()
        self.wiz = wizard
        self.setTitle("How much VRAM may it use?")
        self.setSubTitle("The planner picks the most faithful recipe that fits, and shows "
                         "where every byte goes.")
        self.hardware = QLabel()
        self.hardware.setObjectName("Muted")
        self.hardware.setWordWrap(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setSingleStep(1)
        self.slider.setPageStep(10)
        self.budget_label = QLabel()
        self.budget_label.setMinimumWidth(70)
        self.context = QSpinBox()
        self.context.setRange(128, 4096)
        self.context.setSingleStep(512)
        self.context.setSuffix(" tokens")
        self.recipe = QComboBox()
        self.recipe.addItem("Automatic: the best that fits", "")
        self.headline = QLabel()
        self.headline.setObjectName("Headline")
        self.headline.setWordWrap(True)
        self.bar = BudgetBar()
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self.speed = QLabel()
        self.speed.setWordWrap(True)
        self.fidelity = QLabel()
        self.fidelity.setWordWrap(True)
        self.message = Message()
        self.advanced = QPushButton("Per-module overrides ▸")
        self.advanced.setCheckable(True)
        self.advanced.setFlat(True)
        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["weights", "bits", "group", "axis", "meta",
                                              "where it lives"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setMaximumHeight(96)  # a header and the recipe's two quantized entries
        self.table.hide()
        self.advanced.toggled.connect(self._toggle_advanced)

        row = QHBoxLayout()
        row.addWidget(QLabel("VRAM budget:"))
        row.addWidget(self.slider, 1)
        row.addWidget(self.budget_label)
        form = QHBoxLayout()
        form.addWidget(QLabel("Context:"))
        form.addWidget(self.context)
        form.addSpacing(16)
        form.addWidget(QLabel("Recipe:"))
        form.addWidget(self.recipe, 1)
        column = QVBoxLayout(self)
        column.addWidget(self.hardware)
        column.addLayout(row)
        column.addLayout(form)
        column.addSpacing(6)
        column.addWidget(self.headline)
        column.addWidget(self.bar)
        column.addWidget(self.legend)
        column.addWidget(self.speed)
        column.addWidget(self.fidelity)
        column.addWidget(self.message)
        column.addWidget(self.advanced, 0, Qt.AlignmentFlag.AlignLeft)
        column.addWidget(self.table)
        column.addStretch(1)

        self.overrides: dict[str, tuple[int, int, int]] = {}  # pattern -> (bits, group, axis)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(PLAN_DEBOUNCE_MS)
        self._timer.timeout.connect(self._replan)
        self.slider.valueChanged.connect(self._on_slider)
        self.context.valueChanged.connect(self._schedule)
        self.recipe.currentIndexChanged.connect(self._on_recipe)
        self._seq = 0
        self._pending = False
        self._filling_table = False

    # the slider counts tenths of a GB
    def budget_gb(self) -> float:
        return self.slider.value() / 10

    def set_budget_gb(self, gb: float) -> None:
        self.slider.setValue(round(gb * 10))

    def initializePage(self) -> None:
        state = self.wiz.state
        if self.recipe.count() == 1:
            for name in ("4bit-g64", "3bit-g64", "hqq-card", "2bit-g16"):
                self.recipe.addItem(name, name)
        max_seq = int(state.config.get("max_position_embeddings", 4096) or 4096)
        self.context.blockSignals(True)
        self.context.setMaximum(max(128, max_seq))
        self.context.setValue(min(4096, max_seq))
        self.context.blockSignals(False)
        self.overrides = {}
        self.wiz.when_gpu_known(self._gpu_ready)

    def _gpu_ready(self) -> None:
        from mixdesk.engine.fit import suggested_budget_gb  # noqa: PLC0415 - pure Python

        gpu = self.wiz.state.gpu
        self.slider.blockSignals(True)
        if gpu is None:
            self.slider.setRange(1, int(MAX_BUDGET_GB_NO_GPU * 10))
            self.set_budget_gb(CPU_DEFAULT_BUDGET_GB)
            self.hardware.setText(f"{CPU_ONLY}. Plan for the GPU that will run the model; "
                                  "speeds assume a PCIe 4 card. Here it would run on the CPU.")
        else:
            total = gpu.total_bytes / 1e9
            self.slider.setRange(1, max(1, int(total * 10)))
            self.set_budget_gb(suggested_budget_gb(gpu.total_bytes))
            self.hardware.setText(f"{gpu.name}: {total:.1f} GB of VRAM. The default keeps "
                                  "about 1 GB for the desktop and other programs.")
        self.slider.blockSignals(False)
        self._on_slider()

    @Slot()
    def _on_slider(self) -> None:
        self.budget_label.setText(f"{self.budget_gb():.1f} GB")
        self._schedule()

    @Slot()
    def _on_recipe(self) -> None:
        self.overrides = {}
        self._schedule()

    @Slot()
    def _schedule(self) -> None:
        self._pending = True
        self.completeChanged.emit()
        self._timer.start()

    def _base_recipe(self) -> str | None:
        return self.recipe.currentData() or None

    @Slot()
    def _replan(self) -> None:
        self._seq += 1
        seq = self._seq
        state = self.wiz.state
        budget, context = self.budget_gb(), self.context.value()
        base = self._base_recipe()
        overrides = dict(self.overrides)
        config, gpu, label = dict(state.config), state.gpu, state.label

        def task(_progress: Any) -> Any:
            from mixdesk.engine.budget import ModelSource  # noqa: PLC0415 - torch, off-thread
            from mixdesk.engine.config import ModelArgs  # noqa: PLC0415
            from mixdesk.engine.fit import choose_plan  # noqa: PLC0415
            from mixdesk.engine.quantize import QuantSpec, get_recipe  # noqa: PLC0415

            source = ModelSource(label, ModelArgs.from_hf_config(config))
            recipe: Any = base
            if overrides:
                specs = {pattern: QuantSpec(bits=b, group=g, axis=a)
                         for pattern, (b, g, a) in overrides.items()}
                recipe = get_recipe(base or "4bit-g64").with_overrides(
                    specs, name=f"{base or '4bit-g64'}+custom")
            return choose_plan(source, gpu, budget, context, recipe=recipe)

        def done(result: Any, error: BaseException | None) -> None:
            if seq != self._seq:
                return
            self._pending = False
            state.budget_gb, state.context = budget, context
            if error is not None:
                state.plan = None
                self.show_plan(None)
                self.message.show_text("error", error_text(error, "Planning"))
            else:
                state.plan = result
                self.message.clear_text()
                self.show_plan(result)
            self.completeChanged.emit()

        self.wiz.background(task, done)

    def show_plan(self, p: Any) -> None:
        from mixdesk.engine.fit import FIDELITY_TOP1, tok_s_text  # noqa: PLC0415

        if p is None:
            self.headline.setText("Nothing fits this budget")
            self.bar.set_plan({}, 0, round(self.budget_gb() * 1e9))
            self.legend.setText("")
            self.speed.setText("")
            self.fidelity.setText("")
            self._fill_table(None)
            return
        gb = 1e9
        self.headline.setText(f"{p.recipe.name} · {p.vram_total / gb:.1f} GB of "
                              f"{self.budget_gb():.1f} GB")
        self.bar.set_plan(p.vram, p.host_bytes, p.budget_bytes)
        parts = [f"<span style='color:{BAR_COLORS.get(k, '#868e96')}'>■</span> {k} "
                 f"{v / gb:.2f} GB" for k, v in p.vram.items() if v > 0]
        if p.host_bytes:
            parts.append(f"<span style='color:{BAR_COLORS['host']}'>■</span> host (pinned RAM) "
                         f"{p.host_bytes / gb:.2f} GB")
        # each item wraps as one piece: its own spaces do not break
        self.legend.setText(" &nbsp; ".join(part.replace(" ", "&nbsp;").replace(
            "<span&nbsp;", "<span ") for part in parts))
        where = p.gpu.name if self.wiz.state.gpu is not None else "a PCIe 4 GPU of this size"
        speed = tok_s_text(p.tok_s)
        self.speed.setText(f"Predicted decode: up to <b>{speed} tok/s</b> on {where} "
                           f"({p.placement}; reads {p.hbm_bytes_per_token / gb:.2f} GB per "
                           "token). A real run is slower than this floor.")
        if math.isinf(p.fidelity_kl):
            self.fidelity.setText("Fidelity: not measured for a custom recipe.")
        else:
            top1 = FIDELITY_TOP1.get(p.recipe.name)
            agree = f", top-1 agreement {top1}%" if top1 is not None else ""
            self.fidelity.setText(f"Fidelity (measured on the demo model, docs/QUALITY.md): KL "
                                  f"{p.fidelity_kl:.2f} against unquantized{agree}. Lower KL is "
                                  "better; Mixtral loses far less than the 135M demo.")
        if p.runnable is not None:
            self.message.show_text("warning", "Only a plan with meta in host memory fits this "
                                   f"budget. {sentence(p.runnable)}: loading refuses it until "
                                   "then. Only a larger budget or a shorter context keeps "
                                   "everything on the GPU.")
        self._fill_table(p)

    def _fill_table(self, p: Any) -> None:
        self._filling_table = True
        self.table.setRowCount(0)
        if p is not None:
            for entry in p.recipe.entries:
                if entry.spec is None:
                    continue
                row = self.table.rowCount()
                self.table.insertRow(row)
                self.table.setItem(row, 0, QTableWidgetItem(entry.pattern))
                for col, (choices, value) in ((1, (BITS_CHOICES, entry.spec.bits)),
                                              (2, (GROUP_CHOICES, entry.spec.group))):
                    combo = QComboBox()
                    for c in choices:
                        combo.addItem(str(c), c)
                    combo.setCurrentIndex(max(0, combo.findData(value)))
                    combo.currentIndexChanged.connect(
                        lambda _i, r=row, pat=entry.pattern, a=entry.spec.axis:
                        self._override(r, pat, a))
                    self.table.setCellWidget(row, col, combo)
                self.table.setItem(row, 3, QTableWidgetItem(str(entry.spec.axis)))
                meta = "fp16" if entry.spec.meta_bits is None else \
                    f"{entry.spec.meta_bits}-bit g{entry.spec.meta_group}"
                self.table.setItem(row, 4, QTableWidgetItem(meta))
                kind = "experts" if "experts" in entry.pattern else "attention"
                where = QTableWidgetItem(p.tensors.get(kind, "GPU"))
                where.setToolTip(where.text())
                self.table.setItem(row, 5, where)
        self._filling_table = False

    def _override(self, row: int, pattern: str, axis: int) -> None:
        """A bits or group choice in the table: the recipe with that entry overridden."""
        if self._filling_table or self.wiz.state.plan is None:
            return
        bits = self.table.cellWidget(row, 1)
        group = self.table.cellWidget(row, 2)
        assert isinstance(bits, QComboBox) and isinstance(group, QComboBox)
        if not self.recipe.currentData():  # automatic: pin the recipe the overrides start from
            name = self.wiz.state.plan.recipe.name.removesuffix("+custom")
            self.recipe.blockSignals(True)
            self.recipe.setCurrentIndex(max(0, self.recipe.findData(name)))
            self.recipe.blockSignals(False)
        self.overrides[pattern] = (int(bits.currentData()), int(group.currentData()), axis)
        self._schedule()

    @Slot(bool)
    def _toggle_advanced(self, shown: bool) -> None:
        self.table.setVisible(shown)
        self.advanced.setText("Per-module overrides ▾" if shown else "Per-module overrides ▸")

    def isComplete(self) -> bool:
        return not self._pending and self.wiz.state.plan is not None


# ---------------------------------------------------------------------------- 3. confirm


class ConfirmPage(QWizardPage):
    """Output folder, disk check, time estimate. Next starts the job (a commit page)."""

    def __init__(self, wizard: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Where to write it")
        self.setSubTitle("Check the numbers, then start. You can cancel at any time and "
                         "resume later: finished layers are kept.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "Quantize")
        self.output = QLineEdit()
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.message = Message()
        row = QHBoxLayout()
        row.addWidget(QLabel("Output folder:"))
        row.addWidget(self.output, 1)
        row.addWidget(self.browse)
        column = QVBoxLayout(self)
        column.addLayout(row)
        column.addWidget(self.summary)
        column.addWidget(self.message)
        column.addStretch(1)
        self.output.textChanged.connect(self._check)
        self._ok = False
        self.needed = 0
        self.free = 0

    def initializePage(self) -> None:
        state = self.wiz.state
        name = f"{state.label}-{state.plan.recipe.name}".replace("+", "-")
        self.output.setText(str(self.wiz.models_folder / name))
        self._check()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder",
                                                  str(self.wiz.models_folder))
        if folder:
            self.output.setText(folder)

    @Slot()
    def _check(self) -> None:
        from mixdesk.engine.fit import human_duration, quantize_estimate  # noqa: PLC0415

        state = self.wiz.state
        p = state.plan
        text = self.output.text().strip()
        dest = Path(text).expanduser() if text else None
        on_gpu = state.gpu is not None
        estimate = quantize_estimate(p, state.source_bytes, on_gpu=on_gpu)
        output_bytes, seconds = estimate.output_bytes, estimate.seconds
        download = state.source_bytes if state.kind == "hub" else 0
        lines = [f"<b>{state.label}</b> → <b>{p.recipe.name}</b> ({p.placement}), "
                 f"{p.vram_total / 1e9:.1f} GB of VRAM at context {p.context}."]
        if download:
            lines.append(f"Downloads {human_bytes(download)} from the hub first "
                         f"({state.hub_id}); the download resumes if it stops.")
        lines.append(f"Writes about {human_bytes(output_bytes)} (reading "
                     f"{human_bytes(state.source_bytes)} of weights).")
        lines.append(f"Takes about {human_duration(seconds)} on the "
                     f"{'GPU' if on_gpu else 'CPU'} (a rough estimate"
                     f"{'' if on_gpu else '; a GPU is far faster'}).")
        if p.runnable is not None:
            lines.append(f"<span style='color:#9a5b00'>Note: {sentence(p.runnable)}. The "
                         "model is written, but loading refuses it at this budget until "
                         "then.</span>")
        self.needed = output_bytes + download + DISK_MARGIN
        self._ok = False
        problem = ""
        if dest is None:
            problem = "Choose an output folder."
        elif (dest / "manifest.json").is_file():
            problem = f"{dest} already holds a quantized model; choose another folder."
        elif (dest / ".mixdesk-job.json").is_file():
            lines.append(f"{dest.name} holds an unfinished job: it resumes where it stopped "
                         "(if it was made with the same recipe).")
        elif dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            problem = f"{dest} is not empty; choose a new or empty folder."
        if dest is not None and not problem:
            try:
                self.free = self.wiz.disk_free(dest)
            except OSError as e:
                problem = f"Cannot read the free space of {dest}: {e.strerror or e}."
            else:
                lines.append(f"{human_bytes(self.free)} free on that disk; needs "
                             f"{human_bytes(self.needed)}.")
                if self.free < self.needed:
                    problem = (f"Not enough disk space: this needs {human_bytes(self.needed)} "
                               f"and {human_bytes(self.free)} is free on the disk of {dest}. "
                               f"Free {human_bytes(self.needed - self.free)} or choose a "
                               "folder on another disk.")
        self.summary.setText("<br>".join(lines))
        if problem:
            self.message.show_text("error", problem)
        else:
            self.message.clear_text()
            self._ok = True
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self._ok

    def validatePage(self) -> bool:
        self._check()  # the disk may have filled since
        if self._ok:
            self.wiz.state.output = Path(self.output.text().strip()).expanduser()
        return self._ok


# ---------------------------------------------------------------------------- 4. run


class RunPage(QWizardPage):
    """The job: download (hub ids), then quantize; progress, cancel, resume, retry."""

    def __init__(self, wizard: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Quantizing")
        self.setSubTitle("It runs in the background; the chat stays usable.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "Next")
        self.stage = QLabel("Starting…")
        self.stage.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.detail = QLabel()
        self.detail.setObjectName("Muted")
        self.detail.setWordWrap(True)
        self.message = Message()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("PrimaryButton")
        self.resume_button.clicked.connect(self.start)
        self.resume_button.hide()
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        buttons.addStretch(1)
        column = QVBoxLayout(self)
        column.addWidget(self.stage)
        column.addWidget(self.progress)
        column.addWidget(self.detail)
        column.addWidget(self.message)
        column.addLayout(buttons)
        column.addStretch(1)
        self.job: BackgroundTask | None = None
        self.cancel_flag = threading.Event()
        self.finished_path: Path | None = None

    def initializePage(self) -> None:
        self.start()

    @property
    def running(self) -> bool:
        return self.job is not None

    @Slot()
    def start(self) -> None:
        if self.job is not None:
            return
        state = self.wiz.state
        self.cancel_flag = threading.Event()
        cancel = self.cancel_flag
        self.message.clear_text()
        self.resume_button.hide()
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        self.stage.setText("Starting…")
        run_job = self.wiz.run_job
        assert state.output is not None
        spec = JobSpec(state.kind, state.source, state.hub_id, state.token, state.plan.recipe,
                       state.output, self.wiz.models_folder)

        def done(result: Any, error: BaseException | None) -> None:
            self.job = None
            self._ended(result, error)

        self.job = self.wiz.background(lambda progress: run_job(spec, progress, cancel),
                                       done, self._on_progress)
        self.wiz.job_started()
        self.completeChanged.emit()

    @Slot(str, float)
    def _on_progress(self, stage: str, fraction: float) -> None:
        head, _, rest = stage.partition(" · ")
        self.stage.setText(head)
        self.detail.setText(rest)
        self.progress.setValue(int(1000 * max(0.0, min(1.0, fraction))))

    @Slot()
    def cancel(self) -> None:
        if self.job is not None:
            self.cancel_flag.set()
            self.cancel_button.setEnabled(False)
            self.stage.setText("Stopping after the tensor in progress…")

    def _ended(self, result: Any, error: BaseException | None) -> None:
        self.cancel_button.hide()
        if error is None:
            self.finished_path = Path(result)
            self.wiz.state.result = self.finished_path
            self.stage.setText("Done.")
            self.progress.setValue(1000)
            self.completeChanged.emit()
            self.wiz.job_ended()
            self.wiz.next()
            return
        self.resume_button.show()
        if isinstance(error, JobCancelled):
            self.stage.setText("Cancelled.")
            self.resume_button.setText("Resume")
            self.message.show_text("note", "Finished layers (and downloaded files) are kept. "
                                   "Resume continues from there, now or later: run the wizard "
                                   "again with the same output folder.")
        else:
            self.stage.setText("Stopped by an error.")
            self.resume_button.setText("Try again")
            self.message.show_text("error", error_text(error, "Quantizing") + " Finished "
                                   "layers are kept; Try again resumes.")
        self.completeChanged.emit()
        self.wiz.job_ended()

    def isComplete(self) -> bool:
        return self.finished_path is not None


@dataclass(frozen=True)
class JobSpec:
    """What the run page hands the job: the source, the recipe and where to write."""

    kind: str
    source: Path | None
    hub_id: str
    token: str | None
    recipe: Any
    output: Path
    models_folder: Path


def run_job(spec: JobSpec, progress: Callable[[str, float], None],
            cancel: threading.Event) -> Path:
    """Off the GUI thread: download a hub source (resuming), then quantize (resuming)."""
    from mixdesk.app.gui.modelspage import download_line  # noqa: PLC0415
    from mixdesk.engine.fit import human_duration  # noqa: PLC0415
    from mixdesk.engine.qformat import quantize_model  # noqa: PLC0415 - torch

    source = spec.source
    if spec.kind == "hub":
        from mixdesk.engine.hub import download  # noqa: PLC0415

        def report(p: Any) -> None:
            progress(f"Downloading {spec.hub_id} · {download_line(p)}",
                     p.done / p.total if p.total else 0.0)

        source = download(spec.hub_id, dest=spec.models_folder / spec.hub_id.rsplit("/", 1)[-1],
                          token=spec.token, progress=report, cancel=cancel)
    assert source is not None

    def quantize_report(e: Any) -> None:
        fraction = e.bytes_done / e.bytes_total if e.bytes_total else 0.0
        left = f" · about {human_duration(e.eta_s)} left" if e.eta_s is not None else ""
        what = {"hash": "Checking the source shards", "quantize": "Quantizing",
                "write": "Writing", "done": "Done"}.get(e.phase, e.phase)
        progress(f"{what} · {e.file} · {e.tensors_done} of {e.tensors_total} tensors{left}",
                 fraction)

    return quantize_model(source, spec.output, spec.recipe, progress=quantize_report,
                          cancel=cancel)


# ---------------------------------------------------------------------------- 5. finish


class FinishPage(QWizardPage):
    def __init__(self, wizard: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Ready")
        self.setSubTitle("The quantized model is written; loading checks every file of it.")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_chat = QCheckBox("Open it in chat now")
        self.open_chat.setChecked(True)
        column = QVBoxLayout(self)
        column.addWidget(self.summary)
        column.addWidget(self.open_chat)
        column.addStretch(1)

    def initializePage(self) -> None:
        from mixdesk.app.gui.models import folder_size  # noqa: PLC0415

        state = self.wiz.state
        path = state.result
        assert path is not None
        p = state.plan
        self.summary.setText(
            f"{state.label} is quantized with {p.recipe.name} in {path} "
            f"({human_bytes(folder_size(path))}). It is in the model menu and on the models "
            "page; the planner predicted "
            f"{p.vram_total / 1e9:.1f} GB of VRAM at context {p.context}.")


# ---------------------------------------------------------------------------- the wizard


class QuantizeWizard(QWizard):
    """Source → budget → confirm → run → finish.

    Attributes:
        models_folder: where downloads and (by default) outputs go.
        state: what the pages learned.
        disk_free: free bytes on the disk of a path (tests fake a full disk).
        check_source: (kind, value, token, remember) -> info; runs off-thread.
        run_job: the job (download + quantize); runs off-thread.
        gpu_probe: returns the GpuInfo or None; runs off-thread.

    Signals:
        open_in_chat(path: str): Finish with "Open it in chat now" ticked.
        model_written(path: str): a quantized model was written (refresh the lists).
        idle(): no background task of the wizard is running any more (it may be deleted).
    """

    open_in_chat = Signal(str)
    model_written = Signal(str)
    idle = Signal()

    def __init__(self, models_folder: Path, models: list[LocalModel], *,
                 source: Path | None = None, gpu_probe: Callable[[], Any] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from mixdesk.app.gui.modelspage import default_gpu_probe  # noqa: PLC0415

        self.setWindowTitle("Quantize for my GPU")
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.setOption(QWizard.WizardOption.NoCancelButtonOnLastPage, True)
        self.resize(760, 600)
        self.models_folder = models_folder
        self.state = WizardState()
        self.disk_free: Callable[[Path], int] = disk_free
        self.check_source = check_source
        self.run_job = run_job
        self.gpu_probe = gpu_probe or default_gpu_probe
        self.pending = 0  # background tasks not yet reported
        self._gpu_waiters: list[Callable[[], None]] = []
        self._probing = False
        self._close_when_stopped = False
        self.source_page = SourcePage(self)
        self.budget_page = BudgetPage(self)
        self.confirm_page = ConfirmPage(self)
        self.run_page = RunPage(self)
        self.finish_page = FinishPage(self)
        for page_id, page in ((SOURCE_PAGE, self.source_page), (BUDGET_PAGE, self.budget_page),
                              (CONFIRM_PAGE, self.confirm_page), (RUN_PAGE, self.run_page),
                              (FINISH_PAGE, self.finish_page)):
            self.setPage(page_id, page)
        unquantized = [m for m in models if m.kind != "mixdesk"]
        self.source_page.set_models(unquantized, source)
        self.probe_gpu()

    def background(self, task: Callable[[Callable[[str, float], None]], Any],
                   on_done: Callable[[Any, BaseException | None], None],
                   on_progress: Callable[[str, float], None] | None = None) -> BackgroundTask:
        """run_in_background, counted: the wizard is deleted only once every task reported."""
        self.pending += 1

        def done(result: Any, error: BaseException | None) -> None:
            if not shiboken6.isValid(self):  # its window closed meanwhile
                return
            self.pending -= 1
            on_done(result, error)
            if self.pending == 0:
                self.idle.emit()

        def progress(stage: str, fraction: float) -> None:
            if on_progress is not None and shiboken6.isValid(self):
                on_progress(stage, fraction)

        return run_in_background(task, done, progress)

    def set_token(self, token: str | None) -> None:
        """A hub token the models page was given: prefill the source page's field."""
        if token:
            self.source_page.token_edit.setText(token)

    def probe_gpu(self) -> None:
        if self._probing or self.state.gpu_known:
            return
        self._probing = True
        probe = self.gpu_probe

        def done(result: Any, error: BaseException | None) -> None:
            self._probing = False
            self.state.gpu = None if error is not None else result
            self.state.gpu_known = True
            waiters, self._gpu_waiters = self._gpu_waiters, []
            for waiter in waiters:
                waiter()

        self.background(lambda _p: probe(), done)

    def when_gpu_known(self, callback: Callable[[], None]) -> None:
        if self.state.gpu_known:
            callback()
        else:
            self._gpu_waiters.append(callback)

    def job_started(self) -> None:
        self.setButtonText(QWizard.WizardButton.CancelButton, "Close")

    def job_ended(self) -> None:
        self.setButtonText(QWizard.WizardButton.CancelButton, "Cancel")
        if self.state.result is not None:
            self.model_written.emit(str(self.state.result))
        if self._close_when_stopped:
            super().reject()

    def confirm_stop(self) -> bool:
        """Asked when the wizard is closed mid-job (tests replace it)."""
        from PySide6.QtWidgets import QMessageBox  # noqa: PLC0415

        return QMessageBox.question(
            self, "Stop quantizing?", "Stop the job? Finished layers are kept: run the "
            "wizard again with the same output folder to resume.") == \
            QMessageBox.StandardButton.Yes

    def reject(self) -> None:
        if self.run_page.running:
            if self.confirm_stop():
                self._close_when_stopped = True
                self.run_page.cancel()
            return
        super().reject()

    def accept(self) -> None:
        path = self.state.result
        super().accept()
        if path is not None and self.finish_page.open_chat.isChecked():
            self.open_in_chat.emit(str(path))
