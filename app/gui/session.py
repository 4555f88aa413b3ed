"""The chat logic between the store, the engine worker and the widgets.

`ChatSession` lives on the GUI thread. It owns the `ChatStore` and talks to
the worker through an `EngineClient`. Widgets call its methods and listen to
its signals; they never touch the store or the worker themselves.

Order of writes, so nothing the user wrote is lost: the user's turn is
committed, then an empty "streaming" answer is committed, and only then is
the request sent to the worker. The answer is committed as it grows
(`StreamingAnswer`), and its final text, status and stats when it ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from mixdesk.app.gui.remotes import RemoteServer, remote_path
from mixdesk.app.gui.settings import Settings, params_from_dict, params_to_dict
from mixdesk.app.gui.worker import EngineClient
from mixdesk.engine.chats import (
    DEFAULT_TITLE,
    ChatStore,
    ChatStoreError,
    Conversation,
    Message,
    SearchHit,
    StreamingAnswer,
)
from mixdesk.engine.events import SamplingParams

log = logging.getLogger("mixdesk.gui.session")

TITLE_CHARS = 48


def title_from(text: str) -> str:
    """A conversation title from its first message: first line, word-trimmed."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) <= TITLE_CHARS:
        return line or DEFAULT_TITLE
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0]
    return (cut or line[:TITLE_CHARS]) + "…"


def build_prompt(system_prompt: str, messages: list[Message]) -> list[dict[str, str]]:
    """Chat messages for the engine.

    Empty messages are skipped and consecutive turns of one role merged, so
    templates that insist on user/assistant alternation (Mistral's) accept a
    history with a failed or stopped answer in it.
    """
    out: list[dict[str, str]] = []
    if system_prompt.strip():
        out.append({"role": "system", "content": system_prompt.strip()})
    for m in messages:
        if not m.content.strip() or m.role == "system":
            continue
        if out and out[-1]["role"] == m.role:
            out[-1]["content"] += "\n\n" + m.content
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class ChatSession(QObject):
    """One window's chat state: the open conversation, the model, the answer in flight.

    Attributes:
        store: the chat store.
        client: the engine worker's handle.
        settings: the app settings.
        current: the open conversation, or None (a new chat not yet written).
        model_info: what the worker reported for the loaded model, or None.
        model_state: "none", "loading", "ready" or "failed".

    Signals:
        conversations_changed(): a title, the order or the set of chats changed.
        conversation_opened(conversation_id: int): rebuild the view; 0 = a blank new chat.
        message_added(message: Message)
        message_text_changed(message_id: int, text: str): the answer grew.
        message_finished(message: Message): final text, status and stats.
        messages_removed(message_ids: list): those messages are gone (regenerate, failure).
        busy_changed(busy: bool): an answer started or ended.
        stats_changed(stats: dict): the latest engine Stats fields.
        model_state_changed(state: str, info: dict)
        notice(level: str, text: str): "error", "warning" or "info" for the banner.
        settings_changed(): the open conversation's system prompt or params changed.
    """

    conversations_changed = Signal()
    conversation_opened = Signal(int)
    message_added = Signal(object)
    message_text_changed = Signal(int, str)
    message_finished = Signal(object)
    messages_removed = Signal(object)
    busy_changed = Signal(bool)
    stats_changed = Signal(object)
    model_state_changed = Signal(str, object)
    notice = Signal(str, str)
    settings_changed = Signal()

    def __init__(self, store: ChatStore, client: EngineClient, settings: Settings,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.client = client
        self.settings = settings
        self.current: Conversation | None = None
        self.model_info: dict[str, Any] | None = None
        self.model_state = "none"
        self.last_stats: dict[str, Any] = {}
        self._request_id: int | None = None
        self._answer: StreamingAnswer | None = None
        self._answer_conversation: int | None = None
        self._loading_path = ""
        worker = client.worker
        worker.tokens_streamed.connect(self._on_tokens)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.model_loaded.connect(self._on_model_loaded)
        worker.load_failed.connect(self._on_load_failed)
        worker.model_unloaded.connect(self._on_model_unloaded)
        worker.remote_failed.connect(self._on_remote_failed)
        self._before_remote: tuple[str, dict[str, Any] | None] = ("none", None)

    # --- state ---

    @property
    def busy(self) -> bool:
        return self._request_id is not None

    @property
    def streaming_message_id(self) -> int | None:
        return self._answer.message_id if self._answer else None

    def messages(self) -> list[Message]:
        return self.store.messages(self.current.id) if self.current else []

    def params(self) -> SamplingParams:
        base = self.settings.default_params
        return params_from_dict(self.current.params, base) if self.current else base

    def system_prompt(self) -> str:
        return self.current.system_prompt if self.current else ""

    # --- conversations ---

    def new_conversation(self) -> None:
        """Show a blank chat; it is written to the store with its first message."""
        self.current = None
        self.conversation_opened.emit(0)
        self.settings_changed.emit()

    def open_conversation(self, conversation_id: int) -> None:
        try:
            self.current = self.store.conversation(conversation_id)
        except KeyError:
            self.notice.emit("warning", "That conversation no longer exists.")
            self.conversations_changed.emit()
            return
        self.conversation_opened.emit(conversation_id)
        self.settings_changed.emit()

    def conversations(self) -> list[Conversation]:
        return self.store.conversations()

    def rename(self, conversation_id: int, title: str) -> None:
        self.store.rename(conversation_id, title)
        if self.current and self.current.id == conversation_id:
            self.current = self.store.conversation(conversation_id)
        self.conversations_changed.emit()

    def delete(self, conversation_id: int) -> None:
        if self._answer_conversation == conversation_id:
            self.stop()
            self._detach_answer()
        self.store.delete_conversation(conversation_id)
        self.conversations_changed.emit()
        if self.current and self.current.id == conversation_id:
            self.new_conversation()

    def search(self, text: str) -> list[SearchHit]:
        return self.store.search(text)

    def set_system_prompt(self, text: str) -> None:
        if self.current is None:
            self._create_current(DEFAULT_TITLE)
        assert self.current is not None
        if text != self.current.system_prompt:
            self.store.update_settings(self.current.id, system_prompt=text)
            self.current = self.store.conversation(self.current.id)
            self.conversations_changed.emit()
            self.settings_changed.emit()

    def set_params(self, params: SamplingParams) -> None:
        if self.current is None:
            self._create_current(DEFAULT_TITLE)
        assert self.current is not None
        self.store.update_settings(self.current.id, params=params_to_dict(params))
        self.current = self.store.conversation(self.current.id)
        self.settings_changed.emit()

    def export_markdown(self, conversation_id: int) -> str:
        return self.store.export_markdown(conversation_id)

    def export_json(self, conversation_id: int) -> str:
        return self.store.export_json(conversation_id)

    def import_json(self, text: str) -> Conversation:
        """Import a JSON export and open it (raises ChatImportError on bad input)."""
        conv = self.store.import_json(text)
        self.conversations_changed.emit()
        self.open_conversation(conv.id)
        return conv

    def _create_current(self, title: str) -> None:
        self.current = self.store.create_conversation(
            title, params=params_to_dict(self.settings.default_params),
            model=str(self.model_info["path"]) if self.model_info else "")
        self.conversations_changed.emit()

    # --- chatting ---

    def send(self, text: str) -> bool:
        """Commit the user's turn and start the answer. False (nothing written) if it can't."""
        if not text.strip() or self.busy:
            return False
        if self.model_state != "ready":
            self.notice.emit("warning", "Load a model before sending: pick one from the "
                             "model menu at the top." if self.model_state != "loading"
                             else "The model is still loading; send again when it is ready.")
            return False
        try:
            if self.current is None:
                self._create_current(title_from(text))
            assert self.current is not None
            if self.current.title == DEFAULT_TITLE and not self.store.messages(self.current.id):
                self.rename(self.current.id, title_from(text))
            message = self.store.add_message(self.current.id, "user", text)  # on disk now
        except ChatStoreError as e:  # nothing sent: the text stays in the composer
            self.notice.emit("error", f"{e} Your message was not sent.")
            return False
        self.message_added.emit(message)
        return self._start_answer()

    def regenerate(self) -> bool:
        """Drop the last answer and answer the last user turn again."""
        if self.busy or self.current is None or self.model_state != "ready":
            return False
        msgs = self.store.messages(self.current.id)
        if not msgs:
            return False
        if msgs[-1].role == "assistant":
            self.store.delete_messages_from(msgs[-1].id)
            self.messages_removed.emit([msgs[-1].id])
        return self._start_answer()

    def edit_and_resend(self, message_id: int, text: str) -> bool:
        """Replace a user turn's text, drop everything after it, answer again."""
        if self.busy or self.current is None or not text.strip():
            return False
        if self.model_state != "ready":
            self.notice.emit("warning", "Load a model before resending.")
            return False
        msgs = self.store.messages(self.current.id)
        target = next((m for m in msgs if m.id == message_id and m.role == "user"), None)
        if target is None:
            return False
        later = [m.id for m in msgs if m.id > message_id]
        self.store.update_message(message_id, content=text)
        if later:
            self.store.delete_messages_from(later[0])
        self.conversation_opened.emit(self.current.id)  # the view rebuilds
        return self._start_answer()

    def stop(self) -> None:
        """Stop the answer in flight; the worker sees it before its next token."""
        if self._request_id is not None:
            self.client.stop(self._request_id)

    def _start_answer(self) -> bool:
        assert self.current is not None
        conv = self.current
        prompt = build_prompt(conv.system_prompt, self.store.messages(conv.id))
        try:
            if self.model_info and conv.model != self.model_info.get("path"):
                self.store.update_settings(conv.id, model=str(self.model_info["path"]))
            self._answer = self.store.start_answer(conv.id)
        except ChatStoreError as e:
            self.notice.emit("error", f"{e} The answer was not started.")
            return False
        self._answer_conversation = conv.id
        self.message_added.emit(self.store.message(self._answer.message_id))
        self._request_id = self.client.generate(prompt, self.params())
        self.busy_changed.emit(True)
        self.conversations_changed.emit()
        return True

    def _detach_answer(self) -> None:
        self._request_id = None
        self._answer = None
        self._answer_conversation = None
        self.busy_changed.emit(False)

    @Slot(int, str, object)
    def _on_tokens(self, request_id: int, text: str, stats: dict[str, Any]) -> None:
        if request_id != self._request_id or self._answer is None:
            return
        try:
            self._answer.append(text)
        except ChatStoreError as e:  # keep streaming to the screen; finish retries the write
            log.warning("could not save the growing answer: %s", e)
        self.message_text_changed.emit(self._answer.message_id, self._answer.text)
        if stats:
            self.last_stats = dict(stats)
            self.stats_changed.emit(self.last_stats)

    @Slot(int, str, str, object)
    def _on_finished(self, request_id: int, reason: str, text: str,
                     stats: dict[str, Any]) -> None:
        if request_id != self._request_id or self._answer is None:
            return
        status = "stopped" if reason == "cancelled" else "complete"
        stats = dict(stats or {}, finish_reason=reason)
        try:
            self._answer.finish(status, stats=stats, text=text)
            message = self.store.message(self._answer.message_id)
        except ChatStoreError as e:
            self._detach_answer()
            self.notice.emit("error", f"The answer could not be saved: {e}")
            return
        self.last_stats = stats
        self._detach_answer()
        self.stats_changed.emit(stats)
        self.message_finished.emit(message)
        self.conversations_changed.emit()

    @Slot(int, str, str, str)
    def _on_failed(self, request_id: int, message: str, kind: str, partial: str) -> None:
        if request_id != self._request_id or self._answer is None:
            return
        answer = self._answer
        log.warning("generation failed (%s): %s", kind, message)
        if partial.strip() or answer.text.strip():
            answer.finish("failed", text=partial or answer.text, stats={"error": message})
            final = self.store.message(answer.message_id)
            self._detach_answer()
            self.message_finished.emit(final)
        else:  # nothing was said: drop the empty answer, keep the user's turn
            self.store.delete_messages_from(answer.message_id)
            self._detach_answer()
            self.messages_removed.emit([answer.message_id])
        self.notice.emit("error", message)

    # --- the model ---

    def load_model(self, path: str | Path) -> None:
        if self.busy:
            self.notice.emit("warning", "Stop the answer in progress before switching models.")
            return
        self._loading_path = str(path)
        self.model_state = "loading"
        self.model_state_changed.emit("loading", {"path": str(path), "name": Path(path).name})
        self.client.load(path)

    def use_remote(self, server: RemoteServer, model: str) -> None:
        """Chat with `model` on a saved server; the current engine stays if it fails."""
        if self.busy:
            self.notice.emit("warning", "Stop the answer in progress before switching models.")
            return
        self._before_remote = (self.model_state, self.model_info)
        self._loading_path = remote_path(server.url, model)
        self.model_state = "loading"
        self.model_state_changed.emit("loading", {"path": self._loading_path,
                                                  "name": f"{model} · {server.host}"})
        self.client.use_remote(server.url, server.api_key, model)

    @Slot(str, str)
    def _on_remote_failed(self, message: str, kind: str) -> None:
        log.warning("remote model failed (%s): %s", kind, message)
        self.model_state, self.model_info = self._before_remote
        self.model_state_changed.emit(self.model_state, self.model_info or {})
        self.notice.emit("error", message)

    def unload_model(self) -> None:
        if self.busy:
            self.stop()
        self.client.unload()

    @Slot(object)
    def _on_model_loaded(self, info: dict[str, Any]) -> None:
        self.model_info = info
        self.model_state = "ready"
        if not info.get("remote"):  # the app reopens local models only
            self.settings.last_model = str(info.get("path", ""))
        self.model_state_changed.emit("ready", info)

    @Slot(str, str)
    def _on_load_failed(self, message: str, kind: str) -> None:
        log.warning("model load failed (%s): %s", kind, message)
        self.model_info = None
        self.model_state = "failed"
        self.model_state_changed.emit("failed", {"path": self._loading_path,
                                                 "message": message, "kind": kind})
        self.notice.emit("error", message)

    @Slot()
    def _on_model_unloaded(self) -> None:
        self.model_info = None
        self.model_state = "none"
        self.model_state_changed.emit("none", {})

    def close(self) -> None:
        """Finish the answer in flight as stopped (the worker is shutting down)."""
        if self._answer is not None:
            self._answer.finish("stopped")
            self._detach_answer()
