"""The chat store: conversations and messages in one SQLite file.

Nothing the user wrote is ever lost:

- the user's turn is committed before the model sees it;
- the answer is committed while it grows (`StreamingAnswer`, at least once a
  second), so a crash loses at most the last second of tokens;
- on open, an answer left "streaming" by a crashed process is marked
  "interrupted", with its partial text kept.

The file is in WAL mode (readers never block the writer), has an FTS5 index
over message text, and carries its schema version in `PRAGMA user_version`;
`MIGRATIONS` brings an older file up to date. History is linear: regenerate
and edit-and-resend delete the messages after the turn they start from.

No Qt here: the GUI, the CLI and tests all use this module directly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from mixdesk.engine.errors import (  # re-exported: the GUI imports them from here
    ChatDatabaseCorruptError,
    ChatDatabaseLockedError,
    ChatImportError,
    ChatStoreError,
)

log = logging.getLogger("mixdesk.chats")

Role = Literal["system", "user", "assistant"]
Status = Literal["complete", "streaming", "stopped", "interrupted", "failed"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
# complete: finished normally. streaming: being written right now.
# stopped: the user pressed Stop. interrupted: the app died mid-answer.
# failed: the engine reported an error; the partial text is kept.
STATUSES: tuple[str, ...] = ("complete", "streaming", "stopped", "interrupted", "failed")

EXPORT_FORMAT = "mixdesk-chat"
EXPORT_VERSION = 1
DEFAULT_TITLE = "New chat"
COMMIT_INTERVAL_S = 0.5  # the answer on disk is never more than this behind (issue: <= 1 s)


_V1 = """
CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    title         TEXT    NOT NULL,
    system_prompt TEXT    NOT NULL DEFAULT '',
    params        TEXT    NOT NULL DEFAULT '{}',  -- SamplingParams fields, JSON
    model         TEXT    NOT NULL DEFAULT '',    -- model folder the chat last used
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
);
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'complete'
                    CHECK (status IN ('complete', 'streaming', 'stopped', 'interrupted', 'failed')),
    stats           TEXT,                         -- engine Stats fields, JSON
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE INDEX conversations_by_update ON conversations(updated_at DESC);

-- External-content FTS5 index over message text, kept in step by triggers.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
"""

# v2: which process is writing a streaming answer ("host:pid:start time"), so
# opening the file in a second process (another window, a reader) never marks
# a live answer interrupted; only answers whose writer is gone are.
_V2 = """
ALTER TABLE messages ADD COLUMN writer TEXT;
"""

# MIGRATIONS[i] takes a file from user_version i to i + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    system_prompt: str
    params: dict[str, Any]
    model: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    status: str
    stats: dict[str, Any] | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SearchHit:
    """One search match. `snippet` marks matched words with [[ and ]]."""

    conversation_id: int
    title: str
    message_id: int | None  # None when only the title matched
    snippet: str


@dataclass
class OpenResult:
    """What `open_chat_store` opened, and what the user must be told."""

    store: ChatStore
    notice: str | None = None  # one sentence for a banner, None when all went well
    backup_path: Path | None = None


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        id=row["id"],
        title=row["title"],
        system_prompt=row["system_prompt"],
        params=json.loads(row["params"] or "{}"),
        model=row["model"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        conversation_id=row["conversation_id"],
        role=row["role"],
        content=row["content"],
        status=row["status"],
        stats=json.loads(row["stats"]) if row["stats"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_OPEN_WRITERS: set[str] = set()  # tags of the stores open in this process


def process_tag(pid: int | None = None) -> str:
    """"host:pid:start time" naming a live process, unique even after pid reuse."""
    pid = os.getpid() if pid is None else pid
    try:
        import psutil  # noqa: PLC0415 - optional here; without it the pid alone is used

        started = f"{psutil.Process(pid).create_time():.2f}"
    except Exception:
        started = "?"
    return f"{socket.gethostname()}:{pid}:{started}"


def writer_is_alive(tag: str | None) -> bool:
    """Whether the store that wrote `tag` ("host:pid:start:n") is still open.

    In this process that means the store is not closed; elsewhere, that its
    process (same pid and start time, on this host) still runs.
    """
    if not tag:
        return False
    if tag in _OPEN_WRITERS:
        return True
    parts = tag.split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # ours, and that store is closed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    return process_tag(pid) == ":".join(parts[:3])


def fts_query(text: str) -> str:
    """Turn what a person typed into a safe FTS5 query.

    Every word is quoted (so `"`, `*`, `AND`, `-` are plain text) and all must
    match; the last word matches as a prefix, so results follow typing.
    """
    words = [w.replace('"', '""') for w in text.split()]
    if not words:
        return ""
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


class ChatStore:
    """Conversations and messages in one SQLite file.

    Use from one thread (the GUI's main thread). Open it with
    `ChatStore(path)`, or with `open_chat_store(path)` to recover from a
    damaged or locked file.

    Attributes:
        path: the database file.
        recovered_messages: how many answers were found "streaming" on open and
            marked "interrupted".
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 2.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = f"{process_tag()}:{id(self)}"
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise ChatStoreError(f"Cannot open the chat database {self.path}: {e}.") from e
        self._db.row_factory = sqlite3.Row
        _OPEN_WRITERS.add(self.writer)
        try:
            self._setup()
        except sqlite3.OperationalError as e:
            self.close()
            if "locked" in str(e) or "busy" in str(e):
                raise ChatDatabaseLockedError(
                    f"The chat database {self.path} is locked by another program; "
                    "close other mixdesk windows and try again."
                ) from e
            raise ChatDatabaseCorruptError(
                f"The chat database {self.path} cannot be read ({e})."
            ) from e
        except sqlite3.DatabaseError as e:
            self.close()
            raise ChatDatabaseCorruptError(
                f"The chat database {self.path} is damaged or is not a mixdesk database ({e})."
            ) from e
        except ChatStoreError:
            self.close()
            raise

    def _setup(self) -> None:
        db = self._db
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise ChatDatabaseCorruptError(
                f"The chat database {self.path} failed its integrity check ({check})."
            )
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the app being killed; only a
        # power cut can lose the last commits, and it never corrupts the file.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        with self._transaction():  # fail now, not at the first message, if we cannot write
            pass
        self.recovered_messages = self.recover_interrupted()

    def recover_interrupted(self) -> int:
        """Mark "interrupted" every streaming answer whose writing process is gone.

        Returns:
            How many answers were marked.
        """
        rows = self._db.execute(
            "SELECT id, writer FROM messages WHERE status = 'streaming'"
        ).fetchall()
        orphans = [r["id"] for r in rows if not writer_is_alive(r["writer"])]
        if orphans:
            with self._transaction():
                self._db.executemany(
                    "UPDATE messages SET status = 'interrupted' WHERE id = ? "
                    "AND status = 'streaming'", [(i,) for i in orphans])
            log.warning("marked %d unfinished answer(s) interrupted", len(orphans))
        return len(orphans)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ChatStoreError(
                f"The chat database {self.path} was written by a newer mixdesk "
                f"(schema {version}, this one reads up to {SCHEMA_VERSION}); update mixdesk."
            )
        if version == 0 and self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchone()[0]:
            raise ChatDatabaseCorruptError(
                f"{self.path} holds tables but no mixdesk schema version; "
                "it is not a mixdesk chat database."
            )
        for target in range(version, SCHEMA_VERSION):
            with self._transaction():
                for statement in _split_sql(MIGRATIONS[target]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target + 1}")
            log.info("chat database %s migrated to schema %d", self.path, target + 1)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise ChatDatabaseLockedError(
                    f"The chat database {self.path} is locked by another program; "
                    "close other mixdesk windows and try again."
                ) from e
            raise
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the file. Any answer still streaming stays so until the next open."""
        _OPEN_WRITERS.discard(self.writer)
        self._db.close()

    @property
    def schema_version(self) -> int:
        return cast(int, self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- conversations ---

    def create_conversation(
        self,
        title: str = DEFAULT_TITLE,
        *,
        system_prompt: str = "",
        params: dict[str, Any] | None = None,
        model: str = "",
    ) -> Conversation:
        now = time.time()
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO conversations (title, system_prompt, params, model, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (title, system_prompt, json.dumps(params or {}), model, now, now),
            )
        return self.conversation(cast(int, cur.lastrowid))

    def conversation(self, conversation_id: int) -> Conversation:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return _conversation(row)

    def conversations(self) -> list[Conversation]:
        """Every conversation, most recently active first."""
        rows = self._db.execute(
            "SELECT * FROM conversations ORDER BY updated_at DESC, id DESC"
        ).fetchall()
        return [_conversation(r) for r in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        title = " ".join(title.split()) or DEFAULT_TITLE
        with self._transaction():
            self._db.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
            )

    def update_settings(
        self,
        conversation_id: int,
        *,
        system_prompt: str | None = None,
        params: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        """Change a conversation's system prompt, sampling params or model (None keeps)."""
        sets: list[str] = []
        values: list[Any] = []
        for column, value in (
            ("system_prompt", system_prompt),
            ("params", None if params is None else json.dumps(params)),
            ("model", model),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if not sets:
            return
        with self._transaction():
            self._db.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE id = ?",
                (*values, conversation_id),
            )

    def delete_conversation(self, conversation_id: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages ---

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        ).fetchall()
        return [_message(r) for r in rows]

    def message(self, message_id: int) -> Message:
        row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise KeyError(f"no message {message_id}")
        return _message(row)

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        status: str = "complete",
        stats: dict[str, Any] | None = None,
    ) -> Message:
        """Append a message and commit it before returning."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = time.time()
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, status, stats, "
                "created_at, updated_at, writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    role,
                    content,
                    status,
                    json.dumps(stats) if stats else None,
                    now,
                    now,
                    self.writer if status == "streaming" else None,
                ),
            )
            self._touch(conversation_id, now)
        return self.message(cast(int, cur.lastrowid))

    def update_message(
        self,
        message_id: int,
        *,
        content: str | None = None,
        status: str | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        """Change a message's text, status or stats (None keeps) and commit."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = time.time()
        with self._transaction():
            self._db.execute(
                "UPDATE messages SET content = coalesce(?, content), "
                "status = coalesce(?, status), stats = coalesce(?, stats), updated_at = ? "
                "WHERE id = ?",
                (content, status, json.dumps(stats) if stats else None, now, message_id),
            )

    def delete_messages_from(self, message_id: int) -> None:
        """Delete a message and every later one in its conversation (regenerate, edit)."""
        msg = self.message(message_id)
        with self._transaction():
            self._db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                (msg.conversation_id, message_id),
            )

    def start_answer(
        self,
        conversation_id: int,
        *,
        interval_s: float = COMMIT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> StreamingAnswer:
        """Insert an empty assistant message marked "streaming" and return its writer."""
        msg = self.add_message(conversation_id, "assistant", "", status="streaming")
        return StreamingAnswer(self, msg.id, interval_s=interval_s, clock=clock)

    def _touch(self, conversation_id: int, now: float) -> None:
        self._db.execute(
            "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
        )

    # --- search ---

    def search(self, text: str, *, limit: int = 50) -> list[SearchHit]:
        """Conversations whose title or messages contain every word of `text`.

        Message hits come best-ranked first, one per conversation; title-only
        hits follow.
        """
        query = fts_query(text)
        if not query:
            return []
        rows = self._db.execute(
            """
            SELECT m.conversation_id AS cid, c.title AS title, m.id AS mid,
                   snippet(messages_fts, 0, '[[', ']]', '…', 12) AS snip
            FROM messages_fts
            JOIN messages m ON m.id = messages_fts.rowid
            JOIN conversations c ON c.id = m.conversation_id
            WHERE messages_fts MATCH ?
            ORDER BY rank
            LIMIT ?
            """,
            (query, limit * 4),
        ).fetchall()
        hits: list[SearchHit] = []
        seen: set[int] = set()
        for r in rows:
            if r["cid"] not in seen:
                seen.add(r["cid"])
                hits.append(SearchHit(r["cid"], r["title"], r["mid"], r["snip"]))
        words = [w.lower() for w in text.split()]
        for conv in self.conversations():
            if conv.id not in seen and all(w in conv.title.lower() for w in words):
                seen.add(conv.id)
                hits.append(SearchHit(conv.id, conv.title, None, conv.title))
        return hits[:limit]

    # --- export and import ---

    def export_json(self, conversation_id: int) -> str:
        """The conversation and its messages as a JSON document `import_json` reads."""
        conv = self.conversation(conversation_id)
        doc = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "conversation": {
                "title": conv.title,
                "system_prompt": conv.system_prompt,
                "params": conv.params,
                "model": conv.model,
                "created_at": conv.created_at,
                "updated_at": conv.updated_at,
            },
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "status": m.status,
                    "stats": m.stats,
                    "created_at": m.created_at,
                }
                for m in self.messages(conversation_id)
            ],
        }
        return json.dumps(doc, ensure_ascii=False, indent=2)

    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as a Markdown document for people to read."""
        conv = self.conversation(conversation_id)
        lines = [f"# {conv.title}", ""]
        if conv.model:
            lines += [f"*Model: {Path(conv.model).name}*", ""]
        if conv.system_prompt:
            lines += ["**System:**", "", conv.system_prompt, ""]
        names = {"user": "You", "assistant": "Assistant", "system": "System"}
        for m in self.messages(conversation_id):
            note = "" if m.status == "complete" else f" *({m.status})*"
            lines += [f"**{names.get(m.role, m.role)}:**{note}", "", m.content, ""]
        return "\n".join(lines).rstrip() + "\n"

    def import_json(self, text: str) -> Conversation:
        """Add a conversation from `export_json` output, as a new conversation.

        Raises:
            ChatImportError: the text is not a mixdesk chat export. Nothing is
                written in that case.
        """
        conv, messages = _parse_export(text)
        now = time.time()
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO conversations (title, system_prompt, params, model, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    conv["title"],
                    conv["system_prompt"],
                    json.dumps(conv["params"]),
                    conv["model"],
                    conv["created_at"] or now,
                    conv["updated_at"] or now,
                ),
            )
            cid = cast(int, cur.lastrowid)
            for m in messages:
                self._db.execute(
                    "INSERT INTO messages (conversation_id, role, content, status, stats, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        cid,
                        m["role"],
                        m["content"],
                        m["status"],
                        json.dumps(m["stats"]) if m["stats"] else None,
                        m["created_at"] or now,
                        m["created_at"] or now,
                    ),
                )
        return self.conversation(cid)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (triggers hold `;` inside BEGIN ... END)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def _parse_export(text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ChatImportError(
            f"The file is not valid JSON (line {getattr(e, 'lineno', '?')}); "
            "choose a file exported by mixdesk."
        ) from e
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise ChatImportError("The file is JSON but not a mixdesk chat export.")
    if not isinstance(doc.get("version"), int) or doc["version"] > EXPORT_VERSION:
        raise ChatImportError(
            f"The export's version {doc.get('version')!r} is newer than this mixdesk reads "
            f"({EXPORT_VERSION}); update mixdesk."
        )
    conv = doc.get("conversation")
    messages = doc.get("messages")
    if not isinstance(conv, dict) or not isinstance(messages, list):
        raise ChatImportError("The export lacks its 'conversation' or 'messages' section.")
    clean_conv = {
        "title": _field(conv, "title", str, DEFAULT_TITLE),
        "system_prompt": _field(conv, "system_prompt", str, ""),
        "params": _field(conv, "params", dict, {}),
        "model": _field(conv, "model", str, ""),
        "created_at": _field(conv, "created_at", (int, float), None),
        "updated_at": _field(conv, "updated_at", (int, float), None),
    }
    clean_messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatImportError(f"Message {i + 1} of the export is not an object.")
        role = m.get("role")
        status = m.get("status", "complete")
        if role not in ROLES or status not in STATUSES:
            raise ChatImportError(
                f"Message {i + 1} of the export has role {role!r} / status {status!r}; "
                f"expected a role in {ROLES}."
            )
        clean_messages.append(
            {
                "role": role,
                # an import is never "streaming": nobody is writing it
                "status": "interrupted" if status == "streaming" else status,
                "content": _field(m, "content", str, "", where=f"message {i + 1}"),
                "stats": _field(m, "stats", dict, None, where=f"message {i + 1}"),
                "created_at": _field(m, "created_at", (int, float), None),
            }
        )
    return clean_conv, clean_messages


def _field(
    obj: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
    *,
    where: str = "the conversation",
) -> Any:
    value = obj.get(key, default)
    if value is None or value is default:
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ChatImportError(f"The export's {where} has a bad {key!r} value: {value!r}.")
    return value


@dataclass
class StreamingAnswer:
    """Writes a growing answer to the store, committing at most every `interval_s`.

    Call `append` for each piece of text, then `finish` once. A process that
    dies in between leaves the text of the last commit, marked "streaming";
    the next `ChatStore` open marks it "interrupted".

    Attributes:
        message_id: the assistant message being written.
        text: everything appended so far (committed or not).
    """

    store: ChatStore
    message_id: int
    interval_s: float = COMMIT_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    text: str = ""
    _committed: str = field(default="", repr=False)
    _last_commit: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._last_commit = self.clock()

    def append(self, piece: str) -> bool:
        """Add text; commit when `interval_s` has passed. Returns True if it committed."""
        self.text += piece
        if self.clock() - self._last_commit >= self.interval_s:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Commit the text now."""
        if self.text != self._committed:
            self.store.update_message(self.message_id, content=self.text)
            self._committed = self.text
        self._last_commit = self.clock()

    def finish(
        self, status: str = "complete", *, stats: dict[str, Any] | None = None,
        text: str | None = None,
    ) -> None:
        """Commit the final text (`text` replaces what was appended), status and stats."""
        if text is not None:
            self.text = text
        self.store.update_message(self.message_id, content=self.text, status=status, stats=stats)
        self._committed = self.text


def backup_path_for(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return path.with_name(f"{path.name}.{stamp}.bak")


def open_chat_store(path: str | Path) -> OpenResult:
    """Open the store, or move a damaged/locked file aside and open a fresh one.

    A damaged file (and its -wal/-shm) is renamed to `<name>.<time>.bak`, and
    a fresh database takes its place. A locked file is left alone (another
    mixdesk may be using it) and this window uses a fresh file beside it.
    Either way `notice` says so in one sentence.
    """
    path = Path(path)
    try:
        return OpenResult(ChatStore(path))
    except ChatDatabaseLockedError:
        alt = path.with_name(f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        log.warning("chat database %s is locked; using %s", path, alt)
        return OpenResult(
            ChatStore(alt),
            notice=(
                f"Your chat history ({path}) is locked by another program, so this window "
                f"keeps its chats in {alt}; close other mixdesk windows and restart to "
                "see your history."
            ),
        )
    except ChatDatabaseCorruptError as e:
        backup = backup_path_for(path)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                shutil.move(src, Path(str(backup) + suffix))
        log.error("%s; moved it to %s and started a fresh one", e, backup)
        return OpenResult(
            ChatStore(path),
            notice=(
                f"Your chat history was damaged and could not be opened; it was kept as "
                f"{backup} and a fresh history was started."
            ),
            backup_path=backup,
        )
