"""The models page: local models with fit badges, the recommended catalog, hub search, downloads.

A view only. What it shows comes from `models.py` (folders), `engine.fit` (badges,
computed off the GUI thread because the planner imports torch), `engine.catalog`
(the catalog, hub search) and `engine.hub` (downloads). Every slow call goes
through `tasks.run_in_background`; jobs never touch widgets.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import Qt, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui import theme
from mixdesk.app.gui.models import LocalModel, find_models, human_bytes
from mixdesk.app.gui.statusbar import CPU_ONLY
from mixdesk.app.gui.tasks import BackgroundTask, run_in_background
from mixdesk.engine.errors import GatedRepoError, JobCancelled, MixdeskError

log = logging.getLogger("mixdesk.gui.models")

GpuProbe = Callable[[], Any]  # returns an engine.budget.GpuInfo or None (runs off-thread)

BADGE_COLORS = {  # level -> (light bg, light fg, dark bg, dark fg)
    "green": ("#d3f9d8", "#1b6e2c", "#1e3a26", "#8ce99a"),
    "yellow": ("#fff3bf", "#7a5600", "#3d3413", "#ffe066"),
    "red": ("#ffe3e3", "#b02525", "#4a1f1f", "#ffa8a8"),
    "cpu": ("#e7f1ff", "#0b3d91", "#13294b", "#cfe2ff"),
    "unknown": ("#e9ecef", "#495057", "#2f3136", "#ced4da"),
    "checking": ("#e9ecef", "#495057", "#2f3136", "#ced4da"),
}


def default_gpu_probe() -> Any:
    from mixdesk.engine.budget import detect_gpu  # noqa: PLC0415 - torch, off-thread

    try:
        return detect_gpu()
    except Exception:  # a broken CUDA install: plan as if on the CPU
        log.exception("GPU detection failed; fit badges assume the CPU")
        return None


def model_format(model: LocalModel) -> tuple[str, str]:
    """(format, recipe) for the table: read from the folder's small JSON files only."""
    if model.kind != "mixdesk":
        return "Hugging Face · safetensors", "unquantized"
    try:
        manifest = json.loads((model.path / "manifest.json").read_text(encoding="utf-8"))
        recipe = str(manifest["recipe"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        recipe = "unreadable manifest"
    return "mixdesk quantized", recipe


@dataclass
class DownloadJob:
    """A download the page started (one per repo id).

    Attributes:
        repo_id: the hub id.
        name: the model folder it becomes.
        checkpoint: "safetensors", or "hqq" (a published hqq checkpoint, then imported).
        cancel: set to stop; the partial files stay, and Download resumes.
        task: the running job, or None once it ended.
        row: the widget showing it.
    """

    repo_id: str
    name: str = ""  # the model folder it becomes, in the models folder
    checkpoint: str = "safetensors"  # or "hqq": qmodel.pt, imported once downloaded
    cancel: threading.Event = field(default_factory=threading.Event)
    task: BackgroundTask | None = None
    row: DownloadRow | None = None


class Card(QFrame):
    """A bordered row: title, subtitle, badge, buttons."""

    def __init__(self, title: str, subtitle: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ModelCard")
        self.title = QLabel(title)
        self.title.setObjectName("CardTitle")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.subtitle = QLabel(subtitle)
        self.subtitle.setObjectName("Muted")
        self.subtitle.setWordWrap(True)
        self.badge = QLabel()
        self.badge.setObjectName("FitBadge")
        self.badge.hide()
        self.buttons = QHBoxLayout()
        self.buttons.setSpacing(6)
        text = QVBoxLayout()
        text.setSpacing(2)
        title_row = QHBoxLayout()
        title_row.addWidget(self.title)
        title_row.addWidget(self.badge)
        title_row.addStretch(1)
        text.addLayout(title_row)
        text.addWidget(self.subtitle)
        self.extra = QVBoxLayout()
        text.addLayout(self.extra)
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 10, 12, 10)
        row.addLayout(text, 1)
        row.addLayout(self.buttons)

    def add_button(self, text: str, slot: Callable[[], None], *, primary: bool = False,
                   tip: str = "") -> QPushButton:
        button = QPushButton(text)
        if primary:
            button.setObjectName("PrimaryButton")
        if tip:
            button.setToolTip(tip)
        button.clicked.connect(slot)
        self.buttons.addWidget(button, 0, Qt.AlignmentFlag.AlignVCenter)
        return button

    def set_badge(self, level: str, text: str, tip: str = "") -> None:
        self.badge.setProperty("level", level)
        self.badge.setText(text)
        self.badge.setToolTip(tip)
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)
        self.badge.show()


class DownloadRow(Card):
    """A download in progress: bar, bytes/speed/ETA, Cancel (then Resume)."""

    def __init__(self, repo_id: str, parent: QWidget | None = None) -> None:
        super().__init__(repo_id, "Starting…", parent)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.extra.addWidget(self.progress)
        self.cancel_button: QPushButton | None = None


class ModelsPage(QWidget):
    """Local models, the catalog, hub search and downloads.

    Attributes:
        models_folder: where models live (and downloads go).
        models: the local models shown, in order.
        cards: model path -> its card.
        fits: model path -> its engine.fit.Fit, once computed.
        downloads: repo id -> DownloadJob.
        gpu_probe: returns the GpuInfo (or None) off the GUI thread; tests replace it.
        loaded_path: returns the path of the model loaded in chat ("" if none).

    Signals:
        chat_requested(path: str): load this model and show the chat.
        quantize_requested(path: str): open the wizard with this source ("" for none).
        back_requested(): show the chat.
        add_server_requested(): open "Add a server…".
        notice(level: str, text: str): for the window's banner.
        refreshed(): the list and its fit badges are up to date.
        download_finished(repo_id: str, path: str): path is "" when it failed or stopped.
        search_finished(count: int): hub search results are shown (-1: it failed).
    """

    chat_requested = Signal(str)
    quantize_requested = Signal(str)
    back_requested = Signal()
    add_server_requested = Signal()
    notice = Signal(str, str)
    refreshed = Signal()
    download_finished = Signal(str, str)
    search_finished = Signal(int)

    def __init__(self, models_folder: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ModelsPage")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.models_folder = models_folder
        self.models: list[LocalModel] = []
        self.cards: dict[Path, Card] = {}
        self.fits: dict[Path, Any] = {}
        self.downloads: dict[str, DownloadJob] = {}
        self.gpu_probe: GpuProbe = default_gpu_probe
        self.loaded_path: Callable[[], str] = lambda: ""
        self.token: str | None = None  # given in this session; None: HF_TOKEN or the store
        self._gpu: Any = None
        self._gpu_known = False
        self._refresh_seq = 0
        self._search_job: BackgroundTask | None = None
        self.dark = False
        self._build()

    # --- layout ---

    def _build(self) -> None:  # noqa: PLR0915 - widgets, laid out
        headline = QLabel("Models")
        headline.setObjectName("Headline")
        self.hardware = QLabel("Detecting the GPU…")
        self.hardware.setObjectName("Muted")
        self.wizard_button = QPushButton("Quantize for my GPU…")
        self.wizard_button.setObjectName("PrimaryButton")
        self.wizard_button.clicked.connect(lambda: self.quantize_requested.emit(""))
        self.token_button = QPushButton("Hub token…")
        self.token_button.setToolTip("A Hugging Face token for gated models (mistralai)")
        self.token_button.clicked.connect(self.ask_token)
        self.back_button = QPushButton("Back to chat")
        self.back_button.clicked.connect(self.back_requested)
        header = QHBoxLayout()
        header.addWidget(headline)
        header.addStretch(1)
        header.addWidget(self.token_button)
        header.addWidget(self.wizard_button)
        header.addWidget(self.back_button)

        self.local_box = QVBoxLayout()
        self.local_box.setSpacing(6)
        self.empty = QLabel("No models yet. Download one below, or put a Hugging Face model "
                            "folder into the models folder.")
        self.empty.setObjectName("Muted")
        self.empty.setWordWrap(True)
        self.downloads_label = self._section("DOWNLOADS")
        self.downloads_box = QVBoxLayout()
        self.downloads_box.setSpacing(6)
        self.downloads_label.hide()

        self.catalog_box = QVBoxLayout()
        self.catalog_box.setSpacing(6)
        self.catalog_cards: dict[str, Card] = {}
        self._build_catalog()

        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search the Hugging Face hub, e.g. Mixtral instruct")
        self.search_edit.setObjectName("FilterField")
        self.search_edit.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        search_row = QHBoxLayout()
        search_row.addWidget(self.search_edit, 1)
        search_row.addWidget(self.search_button)
        self.search_status = QLabel()
        self.search_status.setObjectName("Muted")
        self.search_status.setWordWrap(True)
        self.search_status.hide()
        self.results_box = QVBoxLayout()
        self.results_box.setSpacing(6)
        self.result_cards: dict[str, Card] = {}

        column = QVBoxLayout()
        column.setSpacing(8)
        column.addLayout(header)
        column.addWidget(self.hardware)
        self.folder_label = self._section("ON THIS COMPUTER")
        column.addWidget(self.folder_label)
        column.addWidget(self.empty)
        column.addLayout(self.local_box)
        column.addWidget(self.downloads_label)
        column.addLayout(self.downloads_box)
        column.addWidget(self._section("RECOMMENDED"))
        column.addLayout(self.catalog_box)
        column.addWidget(self._section("SEARCH THE HUB"))
        column.addLayout(search_row)
        column.addWidget(self.search_status)
        column.addLayout(self.results_box)
        column.addStretch(1)
        body = QWidget()
        body.setObjectName("ModelsBody")
        body.setLayout(column)
        body.setMaximumWidth(980)
        holder = QWidget()
        holder.setObjectName("ModelsCanvas")
        centre = QHBoxLayout(holder)
        centre.setContentsMargins(24, 16, 24, 16)
        centre.addStretch(0)
        centre.addWidget(body, 1)
        centre.addStretch(0)
        scroll = QScrollArea()
        scroll.setObjectName("ModelsScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(holder)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    @staticmethod
    def _section(text: str) -> QLabel:
        label = QLabel(text)
        label.setObjectName("SectionLabel")
        return label

    def _build_catalog(self) -> None:
        from mixdesk.engine.catalog import CATALOG  # noqa: PLC0415 - pure Python

        for entry in CATALOG:
            size = f"about {entry.size_gb:.0f} GB to download" if entry.size_gb else ""
            gated = " · gated: needs a hub token" if entry.gated else ""
            card = Card(entry.title, f"{entry.blurb}\n{entry.repo_id} · {size}{gated}")
            if entry.action == "server":
                card.set_badge("red", "needs a server")
                card.add_button("Add a server…", self.add_server_requested.emit)
            elif entry.action == "import":
                card.add_button("Download", partial(self.start_download, entry.repo_id,
                                                    "hqq"),
                                tip="Download, then convert with `mixdesk import-hqq`")
            else:
                card.add_button("Download", partial(self.start_download, entry.repo_id))
            self.catalog_cards[entry.repo_id] = card
            self.catalog_box.addWidget(card)

    def set_dark(self, dark: bool) -> None:
        self.dark = dark
        c = theme.colors(dark)
        badges = []
        for level, (lbg, lfg, dbg, dfg) in BADGE_COLORS.items():
            bg, fg = (dbg, dfg) if dark else (lbg, lfg)
            badges.append(f'QLabel#FitBadge[level="{level}"] {{ background: {bg}; color: {fg}; }}')
        self.setStyleSheet(
            f"QWidget#ModelsPage, QWidget#ModelsCanvas, QWidget#ModelsBody {{ "
            f"background: {c['window']}; }}\n"
            f"QFrame#ModelCard {{ background: {c['base']}; border: 1px solid {c['border']}; "
            "border-radius: 8px; }\n"
            "QFrame#ModelCard QLabel { background: transparent; }\n"
            "QLabel#CardTitle { font-weight: bold; }\n"
            "QLabel#FitBadge { border-radius: 9px; padding: 2px 8px; font-size: 11px; "
            "font-weight: bold; }\n" + "\n".join(badges))

    # --- local models ---

    def set_gpu_probe(self, probe: GpuProbe) -> None:
        """Use another GPU probe (tests, screenshots); the next refresh asks it again."""
        self.gpu_probe = probe
        self._gpu_known = False

    def set_models_folder(self, folder: Path) -> None:
        self.models_folder = folder
        self.refresh()

    @Slot()
    def refresh(self) -> None:
        """List the models folder now; compute the fit badges in the background."""
        self.models = find_models(self.models_folder)
        self.folder_label.setText(f"ON THIS COMPUTER · {self.models_folder}")
        for card in self.cards.values():
            card.setParent(None)
            card.deleteLater()
        self.cards = {}
        self.empty.setVisible(not self.models)
        for model in self.models:
            self.cards[model.path] = self._model_card(model)
            self.local_box.addWidget(self.cards[model.path])
        self._show_unfinished()
        self._refresh_seq += 1
        seq = self._refresh_seq
        models = list(self.models)
        probe = self.gpu_probe
        known, gpu = self._gpu_known, self._gpu

        def task(_progress: Any) -> tuple[Any, dict[Path, Any]]:
            from mixdesk.engine.fit import fit_for  # noqa: PLC0415 - torch, off-thread

            found = gpu if known else probe()
            return found, {m.path: fit_for(m.path, found, quantized=m.kind == "mixdesk")
                           for m in models}

        def done(result: Any, error: BaseException | None) -> None:
            if not shiboken6.isValid(self):  # the window closed meanwhile
                return
            if seq != self._refresh_seq:
                return  # a newer refresh is on its way
            if error is not None:
                self.notice.emit("warning", f"Could not work out which models fit: {error}")
                self.refreshed.emit()
                return
            gpu_info, fits = result
            self._gpu, self._gpu_known = gpu_info, True
            self._show_gpu(gpu_info)
            self.fits.update(fits)
            for path, fit in fits.items():
                card = self.cards.get(path)
                if card is not None:
                    card.set_badge(fit.level, fit.text, fit.detail)
            self.refreshed.emit()

        run_in_background(task, done)

    def _show_gpu(self, gpu: Any) -> None:
        if gpu is None:
            self.hardware.setText(f"{CPU_ONLY}. Models run there, slowly; the fit badges say "
                                  "so. The wizard still sizes a model for a GPU you name.")
        else:
            self.hardware.setText(f"{gpu.name} · {gpu.total_bytes / 1e9:.1f} GB of VRAM. "
                                  "Badges: green fits with room; yellow fits tight, or keeps "
                                  "the experts in host memory (slower); red does not fit.")

    def _model_card(self, model: LocalModel) -> Card:
        fmt, recipe = model_format(model)
        card = Card(model.name, f"{fmt} · {recipe} · {human_bytes(model.size_bytes)} on disk · "
                                f"{model.description}")
        card.setToolTip(str(model.path))
        card.set_badge("checking", "checking fit…")
        path = str(model.path)
        card.add_button("Chat", partial(self.chat_requested.emit, path), primary=True)
        quantize = card.add_button("Quantize…", partial(self.quantize_requested.emit, path),
                                   tip="Quantize it for your GPU with the wizard")
        quantize.setEnabled(model.kind != "mixdesk")
        if model.kind == "mixdesk":
            quantize.setToolTip("Already quantized")
        card.add_button("Show folder", partial(self.show_folder, model.path))
        card.add_button("Delete", partial(self.delete_model, model.path))
        return card

    def show_folder(self, path: Path) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def confirm(self, title: str, text: str) -> bool:
        """A yes/no question (tests replace it)."""
        answer = QMessageBox.question(self, title, text)
        return answer == QMessageBox.StandardButton.Yes

    def ask_text(self, title: str, label: str) -> str | None:
        """A one-line question (tests replace it)."""
        from PySide6.QtWidgets import QInputDialog, QLineEdit  # noqa: PLC0415

        value, ok = QInputDialog.getText(self, title, label, QLineEdit.EchoMode.Password)
        return value if ok else None

    def delete_model(self, path: Path) -> None:
        """Delete a model folder after a confirm; the loaded model and the models folder
        itself are refused."""
        if str(path) == self.loaded_path():
            self.notice.emit("warning", f"{path.name} is loaded in the chat; unload it from "
                             "the model menu before deleting it.")
            return
        if path.resolve() == self.models_folder.resolve():
            self.notice.emit("warning", f"{path} is the models folder itself; delete it with "
                             "your file manager if you mean to.")
            return
        size = next((m.size_bytes for m in self.models if m.path == path), 0)
        if not self.confirm("Delete model", f"Delete {path.name} ({human_bytes(size)})? The "
                            f"folder {path} and everything in it goes; this cannot be undone."):
            return

        def task(_progress: Any) -> None:
            shutil.rmtree(path)

        def done(_result: Any, error: BaseException | None) -> None:
            if not shiboken6.isValid(self):  # the window closed meanwhile
                return
            if error is not None:
                self.notice.emit("error", f"Could not delete {path}: {error}")
            else:
                self.notice.emit("info", f"Deleted {path.name}.")
            self.refresh()

        run_in_background(task, done)

    # --- token ---

    @Slot()
    def ask_token(self) -> None:
        token = self.ask_text("Hugging Face token",
                              "Gated models (mistralai) need a token. Open the model's page on "
                              "huggingface.co while logged in and accept its conditions,\n"
                              "then create a read token at "
                              "https://huggingface.co/settings/tokens and paste it here:")
        if token is None:
            return
        from mixdesk.engine.hub import save_token  # noqa: PLC0415 - huggingface_hub only

        try:
            save_token(token)
        except (MixdeskError, OSError) as e:
            self.notice.emit("error", f"The token was not saved: {e}")
            return
        self.token = token.strip()
        self.notice.emit("info", "Token saved in huggingface_hub's token store; downloads of "
                         "gated models use it.")

    # --- downloads ---

    def _show_unfinished(self) -> None:
        """Downloads a past session left unfinished (the app was closed or crashed)."""
        from mixdesk.engine.hub import unfinished_downloads  # noqa: PLC0415 - pure Python

        for left in unfinished_downloads(self.models_folder):
            if left.repo_id in self.downloads:
                continue
            row = self._download_row(left.repo_id, left.dest.name)
            row.set_badge("unknown", "unfinished")
            row.subtitle.setText(f"{human_bytes(left.bytes_done)} arrived before it stopped. "
                                 "Resume continues where it stopped.")
            row.add_button("Resume", partial(self.start_download, left.repo_id,
                                             name=left.dest.name), primary=True)
            row.add_button("Discard", partial(self.discard_download, left.repo_id, left.work))

    def _download_row(self, repo_id: str, name: str) -> DownloadRow:
        job = self.downloads.get(repo_id)
        if job is None:
            job = DownloadJob(repo_id, name=name)
            job.row = DownloadRow(repo_id)
            self.downloads[repo_id] = job
            self.downloads_box.addWidget(job.row)
            self.downloads_label.show()
        row = job.row
        assert row is not None
        for i in reversed(range(row.buttons.count())):
            item = row.buttons.itemAt(i)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        return row

    def discard_download(self, repo_id: str, work: Path) -> None:
        """Delete what an unfinished download fetched, after a confirm."""
        if not self.confirm("Discard download", f"Delete the partial download of {repo_id} "
                            f"({work})?"):
            return
        shutil.rmtree(work, ignore_errors=True)
        self._dismiss(repo_id)

    def start_download(self, repo_id: str, checkpoint: str = "safetensors", *,
                       name: str | None = None) -> None:
        """Download `repo_id` into the models folder (as `name`), with progress and cancel."""
        job = self.downloads.get(repo_id)
        if job is not None and job.task is not None:
            return  # already running
        name = name or (job.name if job is not None else repo_id.rsplit("/", 1)[-1])
        row = self._download_row(repo_id, name)
        job = self.downloads[repo_id]
        job.checkpoint = checkpoint
        row.cancel_button = row.add_button("Cancel", partial(self.cancel_download, repo_id))
        row.subtitle.setText("Asking the hub what to fetch…")
        row.set_badge("checking", "downloading")
        job.cancel = threading.Event()
        cancel, token, folder = job.cancel, self.token, self.models_folder

        def task(progress: Callable[[str, float], None]) -> Path:
            from mixdesk.engine.hub import download  # noqa: PLC0415

            def report(p: Any) -> None:
                progress(download_line(p), p.done / p.total if p.total else 0.0)

            if checkpoint == "hqq":
                return download_hqq(repo_id, folder, token, report, cancel)
            return download(repo_id, dest=folder / name, token=token, progress=report,
                            cancel=cancel)

        def on_progress(stage: str, fraction: float) -> None:
            if not shiboken6.isValid(self):  # the window closed meanwhile
                return
            row.subtitle.setText(stage)
            row.progress.setValue(int(1000 * fraction))

        def done(result: Any, error: BaseException | None) -> None:
            if not shiboken6.isValid(self):  # the window closed meanwhile
                return
            job.task = None
            self._download_ended(job, result, error)

        job.task = run_in_background(task, done, on_progress)

    def cancel_download(self, repo_id: str) -> None:
        job = self.downloads.get(repo_id)
        if job is not None:
            job.cancel.set()

    def _download_ended(self, job: DownloadJob, result: Any, error: BaseException | None) -> None:
        row = job.row
        assert row is not None
        if row.cancel_button is not None:
            row.cancel_button.deleteLater()
            row.cancel_button = None
        if error is None:
            row.set_badge("green", "downloaded")
            row.progress.setValue(1000)
            row.subtitle.setText(f"In {result}")
            if job.checkpoint == "hqq":  # imported: quantized already
                row.add_button("Chat", partial(self.chat_requested.emit, str(result)),
                               primary=True)
            else:
                row.add_button("Quantize…", partial(self.quantize_requested.emit, str(result)),
                               primary=True)
            row.add_button("Dismiss", partial(self._dismiss, job.repo_id))
            self.refresh()
            self.download_finished.emit(job.repo_id, str(result))
            return
        if isinstance(error, JobCancelled):
            row.set_badge("unknown", "stopped")
            row.subtitle.setText("Stopped. What arrived is kept; Resume continues from there.")
        else:
            row.set_badge("red", "failed")
            message = str(error) if isinstance(error, MixdeskError) else (
                f"Download failed ({type(error).__name__}: {error}); the log has the details.")
            row.subtitle.setText(message)
            if isinstance(error, GatedRepoError):
                row.add_button("Enter a token…", self.ask_token)
        row.add_button("Resume" if isinstance(error, JobCancelled) else "Try again",
                       partial(self.start_download, job.repo_id, job.checkpoint),
                       primary=True)
        row.add_button("Dismiss", partial(self._dismiss, job.repo_id))
        self.download_finished.emit(job.repo_id, "")

    def _dismiss(self, repo_id: str) -> None:
        job = self.downloads.pop(repo_id, None)
        if job is not None and job.row is not None:
            job.row.setParent(None)
            job.row.deleteLater()
        self.downloads_label.setVisible(bool(self.downloads))

    def shutdown(self) -> None:
        """Stop running downloads (they resume next time)."""
        for job in self.downloads.values():
            job.cancel.set()
        for job in list(self.downloads.values()):
            if job.task is not None:
                job.task.join(10)

    # --- hub search ---

    @Slot()
    def search(self) -> None:
        query = self.search_edit.text().strip()
        if not query or self._search_job is not None:
            return
        self.search_status.setText(f"Searching the hub for “{query}”…")
        self.search_status.show()
        self.search_button.setEnabled(False)
        token = self.token

        def task(_progress: Any) -> Any:
            from mixdesk.engine.catalog import search_hub  # noqa: PLC0415

            return search_hub(query, token=token)

        def done(result: Any, error: BaseException | None) -> None:
            if not shiboken6.isValid(self):  # the window closed meanwhile
                return
            self._search_job = None
            self.search_button.setEnabled(True)
            for card in self.result_cards.values():
                card.setParent(None)
                card.deleteLater()
            self.result_cards = {}
            if error is not None:
                message = str(error) if isinstance(error, MixdeskError) else (
                    f"Search failed ({type(error).__name__}: {error}).")
                self.search_status.setText(message)
                self.search_finished.emit(-1)
                return
            self.search_status.setText(f"{len(result)} models match “{query}”."
                                       if result else f"No model on the hub matches “{query}”.")
            for hit in result:
                self.result_cards[hit.repo_id] = self._result_card(hit)
                self.results_box.addWidget(self.result_cards[hit.repo_id])
            self.search_finished.emit(len(result))

        self._search_job = run_in_background(task, done)

    def _result_card(self, hit: Any) -> Card:
        if hit.size_bytes is not None:
            what = f"{human_bytes(hit.size_bytes)} to download in {hit.files} files"
        else:
            what = hit.note or "size unknown"
        extra = [what]
        if hit.downloads is not None:
            extra.append(f"{hit.downloads:,} downloads")
        if hit.gated:
            extra.append("gated: needs a hub token")
        card = Card(hit.repo_id, " · ".join(extra))
        button = card.add_button("Download", partial(self.start_download, hit.repo_id))
        button.setEnabled(hit.size_bytes is not None or hit.gated)
        return card


def download_line(p: Any) -> str:
    """'1.2 GB of 93.4 GB · 45.0 MB/s · 34 min left · file 3 of 25'."""
    from mixdesk.engine.fit import human_duration  # noqa: PLC0415 - pure Python

    left = f" · {human_duration(p.eta_s)} left" if p.eta_s is not None else ""
    return (f"{human_bytes(p.done)} of {human_bytes(p.total)} · {human_bytes(p.speed)}/s{left}"
            f" · file {min(p.files_done + 1, p.files_total)} of {p.files_total}")


def download_hqq(repo_id: str, folder: Path, token: str | None, report: Callable[[Any], None],
                 cancel: threading.Event) -> Path:
    """A published hqq 0.1.x checkpoint: download it, then import it into the mixdesk format."""
    from mixdesk.engine.hqq_import import import_hqq  # noqa: PLC0415
    from mixdesk.engine.hub import download  # noqa: PLC0415

    name = repo_id.rsplit("/", 1)[-1]
    raw = download(repo_id, dest=folder / ".hqq-downloads" / name, token=token, progress=report,
                   cancel=cancel, checkpoint="hqq")
    dest = folder / f"{name}-mixdesk"
    if (dest / "manifest.json").is_file():
        return dest
    return import_hqq(raw, dest, source_repo=repo_id)
