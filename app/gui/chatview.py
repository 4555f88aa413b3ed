"""The chat view: one card per message, the answer in flight re-rendered as it grows.

Only widgets here; `ChatSession` decides what is shown. Assistant messages are
markdown with highlighted code (`markdown.render`); user messages are shown
as typed.
"""

from __future__ import annotations

import html
import logging
import time
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication, QResizeEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.app.gui import theme
from mixdesk.app.gui.markdown import COPY_SCHEME, render
from mixdesk.engine.chats import Message

log = logging.getLogger("mixdesk.gui.chatview")

MIN_RENDER_INTERVAL_S = 0.05

STATUS_TEXT = {
    "streaming": "writing…",
    "stopped": "stopped",
    "interrupted": "interrupted: the app closed mid-answer",
    "failed": "failed",
}


def format_stats(stats: dict[str, Any] | None) -> str:
    """'42.1 tok/s · TTFT 0.18 s · 128 tokens' from an engine Stats dict."""
    if not stats:
        return ""
    parts = []
    if stats.get("decode_tps"):
        parts.append(f"{stats['decode_tps']:.1f} tok/s")
    if stats.get("ttft_s"):
        parts.append(f"TTFT {stats['ttft_s']:.2f} s")
    if stats.get("generated_tokens"):
        parts.append(f"{stats['generated_tokens']} tokens")
    if stats.get("dropped_turns"):
        parts.append(f"{stats['dropped_turns']} oldest exchange(s) left out to fit the context")
    reason = stats.get("finish_reason")
    if reason == "length":
        parts.append("hit the token limit")
    if stats.get("error"):
        parts.append(str(stats["error"]))
    return " · ".join(parts)


class MessageBody(QTextBrowser):
    """Rich text that grows to fit its document instead of scrolling."""

    link_activated = Signal(QUrl)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MessageBody")
        self.setOpenLinks(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.anchorClicked.connect(self.link_activated)

    @Slot()
    def _fit(self) -> None:
        height = int(self.document().size().height()) + 4
        if height != self.height():
            self.setFixedHeight(height)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit()

    def sizeHint(self) -> QSize:
        return QSize(400, int(self.document().size().height()) + 4)


class MessageWidget(QFrame):
    """One message: who, the text, its status and stats, and its actions.

    Signals:
        edit_submitted(message_id: int, text: str)
        regenerate_requested()
    """

    edit_submitted = Signal(int, str)
    regenerate_requested = Signal()

    def __init__(self, message: Message, *, dark: bool, assistant_name: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MessageCard")
        self.setProperty("role", message.role)
        self.message = message
        self.text = message.content
        self.dark = dark
        self._code_blocks: list[str] = []

        self.role_label = QLabel("You" if message.role == "user" else assistant_name)
        self.role_label.setObjectName("RoleLabel")
        self.status_badge = QLabel()
        self.status_badge.setObjectName("StatusBadge")
        self.copy_button = self._action("copy", "Copy this message")
        self.copy_button.clicked.connect(self._copy_all)
        self.edit_button = self._action("edit", "Edit and resend")
        self.edit_button.clicked.connect(self.start_edit)
        self.regenerate_button = self._action("regenerate", "Regenerate this answer")
        self.regenerate_button.clicked.connect(self.regenerate_requested)

        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 0, 0)
        header.addWidget(self.role_label)
        header.addWidget(self.status_badge)
        header.addStretch(1)
        for button in (self.edit_button, self.regenerate_button, self.copy_button):
            header.addWidget(button)

        self.body = MessageBody()
        self.body.link_activated.connect(self._on_link)
        self.stats_label = QLabel()
        self.stats_label.setObjectName("StatsLabel")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.editor: QPlainTextEdit | None = None
        self._edit_row: QWidget | None = None
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(14, 10, 14, 10)
        self._layout.setSpacing(4)
        self._layout.addLayout(header)
        self._layout.addWidget(self.body)
        self._layout.addWidget(self.stats_label)
        # visibility only once every widget has its parent: a parentless
        # widget made visible becomes a window of its own
        self.edit_button.setVisible(message.role == "user")
        self.regenerate_button.setVisible(False)
        self.render_text()
        self.set_status(message.status, message.stats)

    def _action(self, icon_name: str, tip: str) -> QToolButton:
        button = QToolButton()
        button.setObjectName("MessageAction")
        button.setIcon(theme.icon(icon_name, self.dark))
        button.setIconSize(QSize(15, 15))
        button.setToolTip(tip)
        button.setAutoRaise(True)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        return button

    @property
    def message_id(self) -> int:
        return self.message.id

    def render_text(self) -> None:
        if self.message.role == "user":
            escaped = html.escape(self.text).replace("\n", "<br>")
            self.body.setHtml(f"<p>{escaped}</p>")
            self._code_blocks = []
        else:
            shown = self.text if self.text else "…"
            rendered = render(shown, dark=self.dark)
            self.body.setHtml(rendered.html)
            self._code_blocks = rendered.code_blocks

    def set_text(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self.render_text()

    def set_status(self, status: str, stats: dict[str, Any] | None) -> None:
        self.status_badge.setText(STATUS_TEXT.get(status, ""))
        self.status_badge.setVisible(status in STATUS_TEXT)
        line = format_stats(stats)
        self.stats_label.setText(line)
        self.stats_label.setVisible(bool(line))
        self.copy_button.setVisible(status != "streaming")

    def finish(self, message: Message) -> None:
        self.message = message
        self.set_text(message.content)
        self.set_status(message.status, message.stats)

    def code_block(self, n: int) -> str:
        return self._code_blocks[n]

    @Slot(QUrl)
    def _on_link(self, url: QUrl) -> None:
        if url.scheme() == COPY_SCHEME:
            try:
                QGuiApplication.clipboard().setText(self._code_blocks[int(url.path())])
            except (ValueError, IndexError):
                log.warning("bad copy link %s", url.toString())
            return
        if url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)

    @Slot()
    def _copy_all(self) -> None:
        QGuiApplication.clipboard().setText(self.text)

    @Slot()
    def start_edit(self) -> None:
        if self.editor is not None:
            return
        self.editor = QPlainTextEdit(self.text)
        self.editor.setObjectName("EditField")
        self.editor.setMinimumHeight(80)
        save = QPushButton("Save && resend")
        save.setObjectName("PrimaryButton")
        cancel = QPushButton("Cancel")
        row = QWidget()
        buttons = QHBoxLayout(row)
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addStretch(1)
        buttons.addWidget(cancel)
        buttons.addWidget(save)
        self._edit_row = row
        self.body.hide()
        self._layout.insertWidget(1, self.editor)
        self._layout.insertWidget(2, row)
        save.clicked.connect(self._submit_edit)
        cancel.clicked.connect(self.cancel_edit)
        self.editor.setFocus()

    @Slot()
    def _submit_edit(self) -> None:
        if self.editor is None:
            return
        text = self.editor.toPlainText()
        if text.strip():
            self.edit_submitted.emit(self.message.id, text)

    @Slot()
    def cancel_edit(self) -> None:
        for w in (self.editor, self._edit_row):
            if w is not None:
                w.deleteLater()
        self.editor = None
        self._edit_row = None
        self.body.show()


class ChatView(QScrollArea):
    """The messages of the open conversation, newest at the bottom.

    Signals:
        edit_submitted(message_id: int, text: str)
        regenerate_requested()
    """

    edit_submitted = Signal(int, str)
    regenerate_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ChatScroll")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.dark = False
        self.busy = False
        self.assistant_name = "Assistant"
        self.widgets: dict[int, MessageWidget] = {}
        canvas = QWidget()
        canvas.setObjectName("ChatCanvas")
        self._column = QVBoxLayout(canvas)
        self._column.setContentsMargins(24, 16, 24, 16)
        self._column.setSpacing(10)
        self.placeholder = QLabel(
            "Ask anything. Enter sends, Shift+Enter starts a new line.")
        self.placeholder.setObjectName("Muted")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # an empty chat centres the hint; otherwise messages sit at the top and
        # the trailing stretch takes the rest
        self.placeholder.setSizePolicy(QSizePolicy.Policy.Preferred,
                                       QSizePolicy.Policy.Expanding)
        self._column.addWidget(self.placeholder)
        self._column.addStretch(1)
        self.setWidget(canvas)
        self._stick_to_bottom = True
        self._reveal_id = 0  # a search hit to keep in view, until the chat changes
        # streaming text is drawn at most every MIN_RENDER_INTERVAL_S, and never
        # more than a quarter of the time: a long answer re-renders slower
        self._pending: dict[int, str] = {}
        self._last_render_s = 0.0
        self._last_render_at = 0.0
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.timeout.connect(self._render_pending)
        self.verticalScrollBar().rangeChanged.connect(self._on_range_changed)
        self.verticalScrollBar().valueChanged.connect(self._on_scrolled)

    def message_widgets(self) -> list[MessageWidget]:
        return list(self.widgets.values())

    def set_messages(self, messages: list[Message]) -> None:
        self._pending.clear()
        self._reveal_id = 0
        for w in self.widgets.values():
            self._column.removeWidget(w)
            w.deleteLater()
        self.widgets.clear()
        for m in messages:
            self._append(m)
        self._update_actions()
        self._stick_to_bottom = True
        self._column.activate()
        self.scroll_to_bottom()

    def add_message(self, message: Message) -> None:
        self._reveal_id = 0
        self._append(message)
        self._update_actions()
        self._stick_to_bottom = True

    def _append(self, message: Message) -> None:
        w = MessageWidget(message, dark=self.dark, assistant_name=self.assistant_name,
                          parent=self.widget())
        w.edit_submitted.connect(self.edit_submitted)
        w.regenerate_requested.connect(self.regenerate_requested)
        # keep the trailing stretch last
        self._column.insertWidget(self._column.count() - 1, w)
        self.widgets[message.id] = w
        self.placeholder.hide()

    def update_text(self, message_id: int, text: str) -> None:
        """Show a growing answer's text (coalesced; see MIN_RENDER_INTERVAL_S)."""
        if message_id not in self.widgets:
            return
        self._pending[message_id] = text
        if not self._render_timer.isActive():
            interval = max(MIN_RENDER_INTERVAL_S, 4 * self._last_render_s)
            wait = interval - (time.monotonic() - self._last_render_at)
            self._render_timer.start(max(0, int(wait * 1000)))

    @Slot()
    def _render_pending(self) -> None:
        started = time.monotonic()
        pending, self._pending = self._pending, {}
        for message_id, text in pending.items():
            w = self.widgets.get(message_id)
            if w is not None:
                w.set_text(text)
        self._last_render_at = time.monotonic()
        self._last_render_s = self._last_render_at - started

    def finish_message(self, message: Message) -> None:
        self._pending.pop(message.id, None)
        w = self.widgets.get(message.id)
        if w is not None:
            w.finish(message)
        self._update_actions()

    def remove_messages(self, message_ids: list[int]) -> None:
        for mid in message_ids:
            w = self.widgets.pop(mid, None)
            if w is not None:
                self._column.removeWidget(w)
                w.deleteLater()
        self.placeholder.setVisible(not self.widgets)
        self._update_actions()

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self._update_actions()

    def set_dark(self, dark: bool) -> None:
        self.dark = dark

    def _update_actions(self) -> None:
        """Regenerate on the last answer only; no edits while an answer streams."""
        widgets = list(self.widgets.values())
        self.placeholder.setVisible(not widgets)
        for i, w in enumerate(widgets):
            last = i == len(widgets) - 1
            w.regenerate_button.setVisible(
                last and w.message.role == "assistant" and not self.busy)
            w.edit_button.setVisible(w.message.role == "user" and not self.busy)

    def reveal(self, message_id: int) -> None:
        """Scroll to a message (a search hit) and keep it in view while the page lays out."""
        if message_id not in self.widgets:
            return
        self._stick_to_bottom = False
        self._reveal_id = message_id
        self._scroll_to_reveal()

    def _scroll_to_reveal(self) -> None:
        w = self.widgets.get(self._reveal_id)
        if w is not None:
            self._column.activate()
            self.ensureWidgetVisible(w, 0, 40)

    @Slot()
    def scroll_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    @Slot(int, int)
    def _on_range_changed(self, _low: int, high: int) -> None:
        if self._reveal_id:  # message heights settle over a few layouts
            self._scroll_to_reveal()
        elif self._stick_to_bottom:
            self.verticalScrollBar().setValue(high)

    @Slot(int)
    def _on_scrolled(self, value: int) -> None:
        # reading back up stops the follow; scrolling to the end resumes it
        self._stick_to_bottom = value >= self.verticalScrollBar().maximum() - 8
