"""The main window: sidebar, chat (or first run), side panel, status bar.

It only wires widgets to the `ChatSession` and the engine client; the chat
logic is in `session.py`, the model list in `models.py`.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QUrl, Slot
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDesktopServices,
    QGuiApplication,
    QKeySequence,
    QShortcut,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui import theme
from mixdesk.app.gui.banner import Banner
from mixdesk.app.gui.chatview import ChatView
from mixdesk.app.gui.composer import Composer
from mixdesk.app.gui.conversations import ConversationListModel
from mixdesk.app.gui.firstrun import FirstRunPage
from mixdesk.app.gui.localserver import LocalServer
from mixdesk.app.gui.models import LocalModel, find_models, human_bytes
from mixdesk.app.gui.modelspage import ModelsPage
from mixdesk.app.gui.preferences import PreferencesDialog
from mixdesk.app.gui.remotes import RemoteServer, remote_path, with_server
from mixdesk.app.gui.serverdialog import AddServerDialog
from mixdesk.app.gui.session import ChatSession
from mixdesk.app.gui.sidebar import Sidebar
from mixdesk.app.gui.sidepanel import SidePanel
from mixdesk.app.gui.statusbar import StatusBar
from mixdesk.app.gui.tasks import run_in_background
from mixdesk.app.gui.wizard import QuantizeWizard
from mixdesk.engine.chats import ChatImportError, Message
from mixdesk.engine.errors import MixdeskError

log = logging.getLogger("mixdesk.gui.window")

CHAT_PAGE, FIRST_RUN_PAGE, MODELS_PAGE = 0, 1, 2


class MainWindow(QMainWindow):
    """The app's one window.

    Attributes:
        session: the chat logic.
        dark: the theme draws dark.
        local_models: model folders found in the models folder.
        local_server: the Local server switch's state and request log.
        models_page: local models, catalog, hub search, downloads.
        wizard: the open quantize wizard, or None.
    """

    def __init__(self, session: ChatSession, *, dark: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.settings = session.settings
        self.dark = dark
        self.local_models: list[LocalModel] = []
        self._demo_job: Any = None
        self.local_server = LocalServer(session.client, self.settings, self)
        self.setWindowTitle("mixdesk")
        self.setWindowIcon(theme.app_icon())
        self.resize(1200, 780)
        if self.settings.geometry is not None:
            self.restoreGeometry(self.settings.geometry)

        self.list_model = ConversationListModel()
        self.sidebar = Sidebar(self.list_model)
        self.sidebar.setMinimumWidth(200)
        self.chat_view = ChatView()
        self.composer = Composer()
        self.banner = Banner()
        self.side_panel = SidePanel()
        self.side_panel.hide()
        self.first_run = FirstRunPage()
        self.first_run.set_models_folder(str(self.settings.models_folder))
        self.models_page = ModelsPage(self.settings.models_folder)
        self.models_page.loaded_path = lambda: str((self.session.model_info or {}).get("path", ""))
        self.wizard: QuantizeWizard | None = None
        self.status = StatusBar()
        self.setStatusBar(self.status)

        top = self._build_top_bar()
        self._build_layout(top)
        self._connect()
        self._shortcuts()
        self.apply_dark(dark)
        self.refresh_conversations()
        self.refresh_models()
        self._on_model_state("none", {})
        self.session.new_conversation()

    def _build_top_bar(self) -> QWidget:
        """Model picker, load progress, export and settings-panel buttons."""
        self.model_button = QToolButton()
        self.model_button.setObjectName("ModelButton")
        self.model_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.model_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.model_menu = QMenu(self.model_button)
        self.model_menu.aboutToShow.connect(self._fill_model_menu)
        self.model_button.setMenu(self.model_menu)
        self.models_button = QToolButton()
        self.models_button.setObjectName("ModelButton")
        self.models_button.setText("Models")
        self.models_button.setToolTip("Local models, downloads, and the quantize wizard")
        self.models_button.setCheckable(True)
        self.models_button.clicked.connect(self.toggle_models_page)
        self.load_progress = QProgressBar()
        self.load_progress.setRange(0, 0)  # load_model reports no fraction: a busy bar
        self.load_progress.setMaximumWidth(120)
        self.load_progress.setMaximumHeight(10)
        self.load_progress.setTextVisible(False)
        self.load_progress.hide()
        self.panel_button = QToolButton()
        self.panel_button.setCheckable(True)
        self.panel_button.setToolTip("System prompt and sampling settings")
        self.panel_button.setAutoRaise(True)
        self.panel_button.setIconSize(QSize(18, 18))
        self.panel_button.toggled.connect(self.side_panel.setVisible)
        self.export_button = QToolButton()
        self.export_button.setToolTip("Export this chat")
        self.export_button.setAutoRaise(True)
        self.export_button.setIconSize(QSize(18, 18))
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        export_menu = QMenu(self.export_button)
        export_menu.addAction("Export as Markdown…", lambda: self._export_current("md"))
        export_menu.addAction("Export as JSON…", lambda: self._export_current("json"))
        self.export_button.setMenu(export_menu)
        top = QWidget()
        top.setObjectName("TopBar")
        top_row = QHBoxLayout(top)
        top_row.setContentsMargins(12, 8, 12, 8)
        top_row.addWidget(self.model_button)
        top_row.addWidget(self.models_button)
        top_row.addWidget(self.load_progress)
        top_row.addStretch(1)
        top_row.addWidget(self.export_button)
        top_row.addWidget(self.panel_button)
        return top

    def _build_layout(self, top: QWidget) -> None:
        chat_page = QWidget()
        chat_column = QVBoxLayout(chat_page)
        chat_column.setContentsMargins(0, 0, 0, 0)
        chat_column.setSpacing(0)
        chat_column.addWidget(self.chat_view, 1)
        composer_row = QVBoxLayout()
        composer_row.setContentsMargins(24, 8, 24, 14)
        composer_row.addWidget(self.composer)
        chat_column.addLayout(composer_row)
        self.pages = QStackedWidget()
        self.pages.addWidget(chat_page)
        self.pages.addWidget(self.first_run)
        self.pages.addWidget(self.models_page)

        center = QWidget()
        center_column = QVBoxLayout(center)
        center_column.setContentsMargins(0, 0, 0, 0)
        center_column.setSpacing(0)
        center_column.addWidget(top)
        center_column.addWidget(self.banner)
        center_column.addWidget(self.pages, 1)

        splitter = QSplitter()
        splitter.addWidget(self.sidebar)
        splitter.addWidget(center)
        splitter.addWidget(self.side_panel)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 0)
        splitter.setSizes([250, 900, 280])
        splitter.setChildrenCollapsible(False)
        self.setCentralWidget(splitter)

    # --- wiring ---

    def _connect(self) -> None:
        s = self.session
        s.conversations_changed.connect(self.refresh_conversations)
        s.conversation_opened.connect(self._on_conversation_opened)
        s.message_added.connect(self._on_message_added)
        s.message_text_changed.connect(self.chat_view.update_text)
        s.message_finished.connect(self._on_message_finished)
        s.messages_removed.connect(self.chat_view.remove_messages)
        s.busy_changed.connect(self._on_busy)
        s.stats_changed.connect(self.status.set_stats)
        s.model_state_changed.connect(self._on_model_state)
        s.notice.connect(self.show_notice)
        s.settings_changed.connect(self._load_side_panel)
        s.client.worker.hardware_probed.connect(self._on_hardware)
        self.local_server.state_changed.connect(self._on_local_server)

        self.composer.submitted.connect(self._send)
        self.composer.stop_requested.connect(s.stop)
        self.chat_view.edit_submitted.connect(self._edit_and_resend)
        self.chat_view.regenerate_requested.connect(self._regenerate)
        self.sidebar.new_chat_requested.connect(self.new_chat)
        self.sidebar.conversation_selected.connect(self.open_conversation)
        self.sidebar.message_selected.connect(self.chat_view.reveal)
        self.sidebar.rename_requested.connect(self.rename_conversation)
        self.sidebar.delete_requested.connect(self.delete_conversation)
        self.sidebar.export_requested.connect(self.export_conversation)
        self.sidebar.import_requested.connect(self.import_conversation)
        self.sidebar.search_changed.connect(self.search)
        self.sidebar.preferences_requested.connect(self.open_preferences)
        self.side_panel.system_prompt_edited.connect(s.set_system_prompt)
        self.side_panel.params_edited.connect(s.set_params)
        self.side_panel.save_default_requested.connect(self._save_default_params)
        self.first_run.build_demo_requested.connect(self.build_demo)
        self.first_run.choose_folder_requested.connect(self.choose_model_folder)
        mp = self.models_page
        mp.chat_requested.connect(self.chat_with)
        mp.quantize_requested.connect(lambda path: self.open_wizard(Path(path) if path else None))
        mp.back_requested.connect(self.show_chat_page)
        mp.add_server_requested.connect(self.add_server)
        mp.notice.connect(self.show_notice)

    def _shortcuts(self) -> None:
        bindings = [
            (QKeySequence(QKeySequence.StandardKey.New), self.new_chat),
            (QKeySequence(QKeySequence.StandardKey.Find), self.sidebar.focus_search),
            (QKeySequence(Qt.Key.Key_Escape), self._escape),
            (QKeySequence("Ctrl+L"), self.composer.edit.setFocus),
            (QKeySequence("Ctrl+,"), self.open_preferences),
        ]
        for key, slot in bindings:
            shortcut = QShortcut(key, self)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(slot)
        quit_action = QAction(self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        self.addAction(quit_action)

    def apply_dark(self, dark: bool) -> None:
        self.dark = dark
        self.chat_view.set_dark(dark)
        self.composer.set_dark(dark)
        self.banner.set_dark(dark)
        self.sidebar.set_dark(dark)
        self.panel_button.setIcon(theme.icon("settings", dark))
        self.export_button.setIcon(theme.icon("export", dark))
        self.model_button.setIcon(theme.icon("chip", dark))
        self.models_page.set_dark(dark)
        if self.session.current is not None:
            self.chat_view.set_messages(self.session.messages())

    # --- conversations ---

    @Slot()
    def refresh_conversations(self) -> None:
        query = self.sidebar.search.text()
        if query.strip():
            self.list_model.set_search_results(self.session.search(query))
        else:
            self.list_model.set_conversations(self.session.conversations())
        if self.session.current is not None:
            self.sidebar.select(self.session.current.id)

    @Slot(str)
    def search(self, text: str) -> None:
        if text.strip():
            self.list_model.set_search_results(self.session.search(text))
        else:
            self.list_model.set_conversations(self.session.conversations())
        if self.session.current is not None:
            self.sidebar.select(self.session.current.id)

    @Slot()
    def new_chat(self) -> None:
        self.side_panel.flush()
        self.session.new_conversation()
        self.composer.edit.setFocus()

    @Slot(int)
    def open_conversation(self, conversation_id: int) -> None:
        self.side_panel.flush()  # a pending system prompt edit belongs to the chat it was typed in
        self.session.open_conversation(conversation_id)

    @Slot(int)
    def _on_conversation_opened(self, conversation_id: int) -> None:
        messages = self.session.messages()
        self.chat_view.set_messages(messages)
        # the status bar speaks for this chat: its last answer's numbers
        last = next((m.stats for m in reversed(messages)
                     if m.role == "assistant" and m.stats and "context_max" in m.stats), None)
        if last is not None:
            self.status.set_stats(last)
        elif not self.session.busy:
            self.status.set_stats({})
            self.status.set_context_max((self.session.model_info or {}).get("context"))
        self.chat_view.set_busy(self.session.busy)
        self.export_button.setEnabled(bool(conversation_id))
        if conversation_id:
            self.sidebar.select(conversation_id)
        else:
            self.sidebar.list.clearSelection()

    @Slot(object)
    def _on_message_added(self, message: Message) -> None:
        if self.session.current and message.conversation_id == self.session.current.id:
            self.chat_view.add_message(message)
            self.export_button.setEnabled(True)

    @Slot(object)
    def _on_message_finished(self, message: Message) -> None:
        self.chat_view.finish_message(message)

    def ask_text(self, title: str, label: str, text: str) -> str | None:
        """A one-line question (tests replace it)."""
        value, ok = QInputDialog.getText(self, title, label, text=text)
        return value if ok else None

    def confirm(self, title: str, text: str) -> bool:
        """A yes/no question (tests replace it)."""
        answer = QMessageBox.question(self, title, text)
        return answer == QMessageBox.StandardButton.Yes

    @Slot(int)
    def rename_conversation(self, conversation_id: int) -> None:
        title = self.session.store.conversation(conversation_id).title
        new = self.ask_text("Rename chat", "Title:", title)
        if new is not None and new.strip():
            self.session.rename(conversation_id, new)

    @Slot(int)
    def delete_conversation(self, conversation_id: int) -> None:
        title = self.session.store.conversation(conversation_id).title
        if self.confirm("Delete chat", f"Delete “{title}” and all its messages?"):
            self.session.delete(conversation_id)

    def _export_current(self, fmt: str) -> None:
        if self.session.current is not None:
            self.export_conversation(self.session.current.id, fmt)

    @Slot(int, str)
    def export_conversation(self, conversation_id: int, fmt: str) -> None:
        title = self.session.store.conversation(conversation_id).title
        safe = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in title).strip()
        suffix, kind = (".md", "Markdown (*.md)") if fmt == "md" else (".json", "JSON (*.json)")
        path, _ = QFileDialog.getSaveFileName(self, "Export chat",
                                              str(Path.home() / f"{safe or 'chat'}{suffix}"),
                                              kind)
        if not path:
            return
        text = (self.session.export_markdown(conversation_id) if fmt == "md"
                else self.session.export_json(conversation_id))
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as e:
            self.show_notice("error", f"Could not write {path}: {e.strerror or e}.")
            return
        self.show_notice("info", f"Exported to {path}.")

    @Slot()
    def import_conversation(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import chat", str(Path.home()),
                                              "mixdesk JSON export (*.json)")
        if path:
            self.import_file(Path(path))

    def import_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
            self.session.import_json(text)
        except (OSError, UnicodeDecodeError) as e:
            self.show_notice("error", f"Could not read {path}: {e}.")
        except ChatImportError as e:
            self.show_notice("error", f"{path.name}: {e}")

    # --- chatting ---

    @Slot(str)
    def _send(self, text: str) -> None:
        self.side_panel.flush()
        if self.session.send(text):
            self.composer.clear()
            self.banner.hide()

    @Slot(int, str)
    def _edit_and_resend(self, message_id: int, text: str) -> None:
        self.session.edit_and_resend(message_id, text)

    @Slot()
    def _regenerate(self) -> None:
        if self.session.model_state != "ready":
            self.show_notice("warning", "Load a model to regenerate the answer.")
            return
        self.session.regenerate()

    @Slot()
    def _escape(self) -> None:
        if self.session.busy:
            self.session.stop()
        elif self.banner.isVisible():
            self.banner.hide()

    @Slot(bool)
    def _on_busy(self, busy: bool) -> None:
        self.composer.set_busy(busy)
        self.chat_view.set_busy(busy)

    @Slot(str, str)
    def show_notice(self, level: str, text: str) -> None:
        if level == "error" and "model" in text.lower() and self.local_models:
            self.banner.show_message(level, text, "Choose another model",
                                     self.model_button.showMenu)
        else:
            self.banner.show_message(level, text)

    def _load_side_panel(self) -> None:
        self.side_panel.load(self.session.system_prompt(), self.session.params(),
                             self.settings.default_params)

    @Slot(object)
    def _save_default_params(self, params: Any) -> None:
        self.settings.default_params = params
        self.show_notice("info", "New chats will start with these sampling settings.")

    # --- models ---

    def refresh_models(self) -> None:
        self.local_models = find_models(self.settings.models_folder)
        if self.pages.currentIndex() != MODELS_PAGE:
            self.show_chat_page()

    @Slot()
    def show_chat_page(self) -> None:
        """The chat, or the first-run page while there is no model at all."""
        has_model = bool(self.local_models) or self.session.model_state in ("ready", "loading")
        self.pages.setCurrentIndex(CHAT_PAGE if has_model else FIRST_RUN_PAGE)
        self.models_button.setChecked(False)

    @Slot()
    def show_models_page(self) -> None:
        self.models_page.refresh()
        self.pages.setCurrentIndex(MODELS_PAGE)
        self.models_button.setChecked(True)

    @Slot()
    def toggle_models_page(self) -> None:
        if self.pages.currentIndex() == MODELS_PAGE:
            self.show_chat_page()
        else:
            self.show_models_page()

    @Slot(str)
    def chat_with(self, path: str) -> None:
        """Load a model and show the chat (the models page's Chat, the wizard's finish)."""
        self.pages.setCurrentIndex(CHAT_PAGE)
        self.models_button.setChecked(False)
        self.session.load_model(path)

    @Slot()
    def start_wizard(self) -> None:
        self.open_wizard()

    def open_wizard(self, source: Path | None = None) -> QuantizeWizard:
        """The quantize wizard, non-modal so the chat stays usable while it runs."""
        if self.wizard is not None and self.wizard.isVisible():
            self.wizard.raise_()
            self.wizard.activateWindow()
            return self.wizard
        self.local_models = find_models(self.settings.models_folder)
        wizard = QuantizeWizard(self.settings.models_folder, self.local_models, source=source,
                                gpu_probe=self.models_page.gpu_probe, parent=self)
        wizard.set_token(self.models_page.token)
        wizard.open_in_chat.connect(self.chat_with)
        wizard.model_written.connect(lambda _path: self.models_page.refresh())
        wizard.finished.connect(lambda _result: self._wizard_closed(wizard))
        self.wizard = wizard
        wizard.show()
        return wizard

    def _wizard_closed(self, wizard: QuantizeWizard) -> None:
        if self.wizard is wizard:
            self.wizard = None
        if wizard.pending:  # a check or plan still running reports into its pages first
            wizard.idle.connect(wizard.deleteLater)
        else:
            wizard.deleteLater()

    @Slot()
    def _fill_model_menu(self) -> None:
        self.refresh_models()
        menu = self.model_menu
        menu.clear()
        loaded = (self.session.model_info or {}).get("path")
        if not self.local_models:
            menu.addAction("No models in the models folder").setEnabled(False)
        for m in self.local_models:
            label = f"{m.name} · {m.description} · {human_bytes(m.size_bytes)}"
            action = menu.addAction(label, partial(self.session.load_model, m.path))
            action.setCheckable(True)
            action.setChecked(str(m.path) == loaded)
        servers = self.settings.remote_servers
        if servers:
            menu.addSeparator()
        for server in servers:
            for model in server.models:
                action = menu.addAction(f"{model} · {server.host}",
                                        partial(self.session.use_remote, server, model))
                action.setCheckable(True)
                action.setChecked(remote_path(server.url, model) == loaded)
        menu.addSeparator()
        menu.addAction("Add a server…", self.add_server)
        if servers:
            remove = menu.addMenu("Remove a server")
            for server in servers:
                remove.addAction(server.url, partial(self.remove_server, server.url))
        menu.addAction("Open a model folder…", self.choose_model_folder)
        menu.addAction("Show the models folder", self._show_models_folder)
        menu.addAction("Models and downloads…", self.show_models_page)
        menu.addAction("Quantize for my GPU…", self.start_wizard)
        unload = menu.addAction("Unload model", self.session.unload_model)
        unload.setEnabled(self.session.model_state == "ready")

    @Slot(str, object)
    def _on_model_state(self, state: str, info: dict[str, Any]) -> None:
        name = str(info.get("name") or Path(str(info.get("path", ""))).name)
        self.load_progress.setVisible(state == "loading")
        if state == "ready":
            device = info.get("device", "")
            self.model_button.setText(f"{name} · {device}")
            self.chat_view.assistant_name = name
            self.status.set_context_max(info.get("context"))
            if info.get("vram_used"):
                self.status.set_vram(int(info["vram_used"]))
            self.banner.hide()
            self.refresh_models()
            self.pages.setCurrentIndex(CHAT_PAGE)
            self.models_button.setChecked(False)
        elif state == "loading":
            self.model_button.setText(f"Loading {name}…")
        elif state == "failed":
            self.model_button.setText("Choose a model")
        else:
            self.model_button.setText("Choose a model")
            self.status.set_context_max(None)
        self.composer.edit.setPlaceholderText(
            "Type a message… (Enter sends, Shift+Enter new line)" if state == "ready"
            else "Load a model from the menu above to start chatting")

    @Slot()
    def _show_models_folder(self) -> None:
        folder = self.settings.models_folder
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    @Slot()
    def choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder",
                                                  str(self.settings.models_folder))
        if folder:
            self.pages.setCurrentIndex(CHAT_PAGE)
            self.session.load_model(folder)

    @Slot(object)
    def _on_hardware(self, info: dict[str, Any]) -> None:
        self.status.set_hardware(info)
        self.first_run.set_hardware(str(info.get("gpu") or ""), info.get("vram_total"),
                                    info.get("ram_total"))

    @Slot()
    def build_demo(self) -> None:
        """Build the demo model off the main thread, then load it."""
        from mixdesk.engine.paths import demo_model_dir  # noqa: PLC0415

        dest = self.settings.models_folder / demo_model_dir().name
        self.first_run.set_building(True)

        def task(progress: Any) -> Path:
            from mixdesk.engine.demo import ensure_demo  # noqa: PLC0415 - torch, off-thread

            return ensure_demo(dest, progress=progress)

        def done(result: Any, error: BaseException | None) -> None:
            self._demo_job = None
            self.first_run.set_building(False)
            if error is not None:
                message = str(error) if isinstance(error, MixdeskError) else (
                    f"Building the demo failed ({type(error).__name__}: {error}); "
                    "the log has the details.")
                self.show_notice("error", message)
                return
            self.refresh_models()
            self.session.load_model(result)

        self._demo_job = run_in_background(task, done, self.first_run.set_progress)

    @Slot(str, str, str)
    def _on_local_server(self, _state: str, _url: str, message: str) -> None:
        if message:  # it failed to start, or stopped because its model went away
            self.show_notice("warning", message)

    @Slot()
    def add_server(self) -> None:
        dialog = AddServerDialog(self)
        if dialog.exec() and dialog.server is not None:
            self.save_server(dialog.server)

    def save_server(self, server: RemoteServer) -> None:
        """Remember a tested server; its models join the model picker."""
        self.settings.remote_servers = with_server(self.settings.remote_servers, server)
        self.settings.sync()
        self.show_notice("info", f"Added {server.host}: {', '.join(server.models)}. Pick a "
                         "model from the model menu.")

    def remove_server(self, url: str) -> None:
        self.settings.remote_servers = [s for s in self.settings.remote_servers if s.url != url]
        self.settings.sync()

    @Slot()
    def open_preferences(self) -> None:
        dialog = PreferencesDialog(self.settings, self, local_server=self.local_server)
        if dialog.exec():
            app = QGuiApplication.instance()
            from PySide6.QtWidgets import QApplication  # noqa: PLC0415

            if isinstance(app, QApplication):
                self.apply_dark(theme.apply_theme(app, self.settings.theme,
                                                  self.settings.font_size))
            self.first_run.set_models_folder(str(self.settings.models_folder))
            self.models_page.models_folder = self.settings.models_folder
            self.refresh_models()

    # --- shutdown ---

    def closeEvent(self, event: QCloseEvent) -> None:
        self.models_page.shutdown()  # running downloads stop; they resume next time
        self.settings.geometry = self.saveGeometry()
        self.settings.sync()
        super().closeEvent(event)
