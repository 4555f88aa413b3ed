"""The sidebar's list model: conversations grouped by day, or search results.

Logic only; `sidebar.py` is the view. Rows are either a section header
("Today", "Yesterday", "Previous 7 days", "Earlier", "Search results"), which
cannot be selected, or a conversation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QFont

from mixdesk.engine.chats import Conversation, SearchHit

ConversationIdRole = Qt.ItemDataRole.UserRole + 1
IsHeaderRole = Qt.ItemDataRole.UserRole + 2
MessageIdRole = Qt.ItemDataRole.UserRole + 3
Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class Row:
    text: str
    conversation_id: int = 0  # 0 for a header
    tooltip: str = ""
    message_id: int = 0  # the matching message, for search results

    @property
    def is_header(self) -> bool:
        return self.conversation_id == 0


def section_for(updated_at: float, today: dt.date) -> str:
    day = dt.datetime.fromtimestamp(updated_at).date()
    if day >= today:
        return "Today"
    if day == today - dt.timedelta(days=1):
        return "Yesterday"
    if day > today - dt.timedelta(days=7):
        return "Previous 7 days"
    return "Earlier"


def grouped_rows(conversations: list[Conversation], today: dt.date | None = None) -> list[Row]:
    """Headers and conversations, newest first (conversations arrive sorted)."""
    today = today or dt.date.today()
    rows: list[Row] = []
    current = ""
    for c in conversations:
        section = section_for(c.updated_at, today)
        if section != current:
            rows.append(Row(section))
            current = section
        rows.append(Row(c.title, c.id, c.title))
    return rows


def search_rows(hits: list[SearchHit]) -> list[Row]:
    if not hits:
        return [Row("No matches")]
    rows = [Row(f"Search results ({len(hits)})")]
    for h in hits:
        snippet = " ".join(h.snippet.replace("[[", "").replace("]]", "").split())
        text = h.title if h.message_id is None else f"{h.title}\n{snippet}"
        rows.append(Row(text, h.conversation_id, snippet, h.message_id or 0))
    return rows


class ConversationListModel(QAbstractListModel):
    """Rows for the sidebar list.

    Attributes:
        rows: what the list shows now.
        searching: the rows are search results.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.searching = False

    def set_conversations(self, conversations: list[Conversation]) -> None:
        self.beginResetModel()
        self.rows = grouped_rows(conversations)
        self.searching = False
        self.endResetModel()

    def set_search_results(self, hits: list[SearchHit]) -> None:
        self.beginResetModel()
        self.rows = search_rows(hits)
        self.searching = True
        self.endResetModel()

    def row_of(self, conversation_id: int) -> int:
        for i, r in enumerate(self.rows):
            if r.conversation_id == conversation_id:
                return i
        return -1

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.rows):
            return None
        row = self.rows[index.row()]
        values: dict[int, Any] = {
            Qt.ItemDataRole.DisplayRole: row.text,
            Qt.ItemDataRole.ToolTipRole: row.tooltip or None,
            ConversationIdRole: row.conversation_id,
            IsHeaderRole: row.is_header,
            MessageIdRole: row.message_id,
        }
        if role == Qt.ItemDataRole.FontRole and row.is_header:
            font = QFont()
            font.setBold(True)
            font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
            return font
        return values.get(role)

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        if self.rows[index.row()].is_header:
            return Qt.ItemFlag.ItemIsEnabled
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
