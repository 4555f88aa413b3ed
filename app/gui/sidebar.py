"""The conversation sidebar: new chat, search, the list, and per-chat actions."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPoint, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLineEdit,
    QListView,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui import theme
from mixdesk.app.gui.conversations import (
    ConversationIdRole,
    ConversationListModel,
    MessageIdRole,
)

SEARCH_DELAY_MS = 150  # search as you type, without a query per keystroke


class Sidebar(QWidget):
    """The left column.

    Attributes:
        model: the list model (set by the window from the session).

    Signals:
        new_chat_requested()
        conversation_selected(conversation_id: int)
        message_selected(message_id: int): a search result was picked; show that message.
        rename_requested(conversation_id: int)
        delete_requested(conversation_id: int)
        export_requested(conversation_id: int, fmt: str): "md" or "json".
        import_requested()
        search_changed(text: str): empty text means show all chats.
        preferences_requested()
    """

    new_chat_requested = Signal()
    conversation_selected = Signal(int)
    message_selected = Signal(int)
    rename_requested = Signal(int)
    delete_requested = Signal(int)
    export_requested = Signal(int, str)
    import_requested = Signal()
    search_changed = Signal(str)
    preferences_requested = Signal()

    def __init__(self, model: ConversationListModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Sidebar")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.model = model
        self.new_button = QPushButton("  New chat")
        self.new_button.setObjectName("NewChatButton")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        self.new_button.clicked.connect(self.new_chat_requested)
        self.search = QLineEdit()
        self.search.setObjectName("SearchField")
        self.search.setPlaceholderText("Search chats (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(lambda: self.search_changed.emit(self.search.text()))
        self.search.textChanged.connect(lambda _t: self._search_timer.start())
        self.search.returnPressed.connect(self._search_now)

        self.list = QListView()
        self.list.setModel(model)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setWordWrap(True)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setUniformItemSizes(False)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.list.clicked.connect(self._on_clicked)
        self.list.activated.connect(self._on_clicked)

        self.import_button = QToolButton()
        self.import_button.setToolTip("Import a chat exported as JSON")
        self.import_button.clicked.connect(self.import_requested)
        self.preferences_button = QToolButton()
        self.preferences_button.setToolTip("Preferences")
        self.preferences_button.clicked.connect(self.preferences_requested)
        for b in (self.import_button, self.preferences_button):
            b.setAutoRaise(True)
            b.setIconSize(QSize(18, 18))

        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.import_button)
        bottom.addWidget(self.preferences_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 6)
        layout.setSpacing(8)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addLayout(bottom)

        self._add_list_actions()
        self.set_dark(False)

    def _add_list_actions(self) -> None:
        rename = QAction("Rename", self.list)
        rename.setShortcut(QKeySequence(Qt.Key.Key_F2))
        rename.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        rename.triggered.connect(self._rename_selected)
        delete = QAction("Delete", self.list)
        delete.setShortcut(QKeySequence.StandardKey.Delete)
        delete.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        delete.triggered.connect(self._delete_selected)
        self.list.addActions([rename, delete])

    def set_dark(self, dark: bool) -> None:
        self.new_button.setIcon(theme.icon("new-chat", dark))
        self.import_button.setIcon(theme.icon("import", dark))
        self.preferences_button.setIcon(theme.icon("preferences", dark))
        self.search.setClearButtonEnabled(True)

    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    @Slot()
    def _search_now(self) -> None:
        self._search_timer.stop()
        self.search_changed.emit(self.search.text())

    def select(self, conversation_id: int) -> None:
        row = self.model.row_of(conversation_id)
        if row < 0:
            self.list.clearSelection()
            return
        index = self.model.index(row)
        self.list.setCurrentIndex(index)
        self.list.scrollTo(index)

    def selected_id(self) -> int:
        index = self.list.currentIndex()
        return int(index.data(ConversationIdRole) or 0) if index.isValid() else 0

    @Slot(QModelIndex)
    def _on_clicked(self, index: QModelIndex) -> None:
        cid = int(index.data(ConversationIdRole) or 0)
        if cid:
            self.conversation_selected.emit(cid)
            mid = int(index.data(MessageIdRole) or 0)
            if mid:
                self.message_selected.emit(mid)

    @Slot()
    def _rename_selected(self) -> None:
        if cid := self.selected_id():
            self.rename_requested.emit(cid)

    @Slot()
    def _delete_selected(self) -> None:
        if cid := self.selected_id():
            self.delete_requested.emit(cid)

    @Slot(QPoint)
    def _menu(self, pos: QPoint) -> None:
        index = self.list.indexAt(pos)
        cid = int(index.data(ConversationIdRole) or 0) if index.isValid() else 0
        if not cid:
            return
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self.rename_requested.emit(cid))
        menu.addAction("Export as Markdown…", lambda: self.export_requested.emit(cid, "md"))
        menu.addAction("Export as JSON…", lambda: self.export_requested.emit(cid, "json"))
        menu.addSeparator()
        menu.addAction("Delete", lambda: self.delete_requested.emit(cid))
        menu.exec(self.list.viewport().mapToGlobal(pos))
