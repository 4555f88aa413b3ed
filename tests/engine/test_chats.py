"""The chat store on a real SQLite file: durability, search, export, recovery."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixdesk.engine.chats import (
    SCHEMA_VERSION,
    ChatDatabaseCorruptError,
    ChatImportError,
    ChatStore,
    ChatStoreError,
    fts_query,
    open_chat_store,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chats.sqlite3"


@pytest.fixture
def store(db_path: Path) -> ChatStore:
    s = ChatStore(db_path)
    yield s
    s.close()


def test_fresh_file_is_wal_with_schema_version(store: ChatStore, db_path: Path) -> None:
    assert store.schema_version == SCHEMA_VERSION
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    # another connection sees the same version: it is in the file, not in memory
    other = sqlite3.connect(db_path)
    assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    other.close()


def test_user_turn_is_on_disk_before_returning(store: ChatStore, db_path: Path) -> None:
    conv = store.create_conversation("car", system_prompt="Be brief.", params={"top_k": 7})
    store.add_message(conv.id, "user", "How do I build a car?")
    # a second, independent connection (as after a crash) sees the committed turn
    other = sqlite3.connect(db_path)
    rows = other.execute("SELECT role, content, status FROM messages").fetchall()
    other.close()
    assert rows == [("user", "How do I build a car?", "complete")]
    again = store.conversation(conv.id)
    assert again.params == {"top_k": 7} and again.system_prompt == "Be brief."


def test_streaming_answer_commits_on_interval(store: ChatStore, db_path: Path) -> None:
    now = [100.0]
    conv = store.create_conversation()
    writer = store.start_answer(conv.id, interval_s=1.0, clock=lambda: now[0])

    def on_disk() -> tuple[str, str]:
        other = sqlite3.connect(db_path)
        row = other.execute("SELECT content, status FROM messages").fetchone()
        other.close()
        return row

    assert writer.append("Start ") is False
    assert on_disk() == ("", "streaming")
    now[0] += 0.4
    writer.append("with ")
    assert on_disk() == ("", "streaming")
    now[0] += 0.7  # 1.1 s since the last commit
    assert writer.append("a chassis") is True
    assert on_disk() == ("Start with a chassis", "streaming")
    writer.append(".")
    writer.finish("complete", stats={"decode_tps": 42.0})
    assert on_disk() == ("Start with a chassis.", "complete")
    assert store.messages(conv.id)[0].stats == {"decode_tps": 42.0}


def test_reopen_marks_streaming_interrupted(db_path: Path) -> None:
    s = ChatStore(db_path)
    conv = s.create_conversation()
    s.add_message(conv.id, "user", "hi")
    w = s.start_answer(conv.id)
    w.append("half an ans")
    w.flush()
    s.close()  # never finished: as if the app died
    s2 = ChatStore(db_path)
    assert s2.recovered_messages == 1
    msgs = s2.messages(conv.id)
    assert [(m.role, m.content, m.status) for m in msgs] == [
        ("user", "hi", "complete"),
        ("assistant", "half an ans", "interrupted"),
    ]
    s2.close()


CRASHER = textwrap.dedent(
    """
    import sys, time
    from mixdesk.engine.chats import ChatStore
    store = ChatStore(sys.argv[1])
    conv = store.create_conversation("crash")
    store.add_message(conv.id, "user", "Tell me a long story.")
    writer = store.start_answer(conv.id, interval_s=0.05)
    i = 0
    while True:  # stream forever; the parent kills us
        i += 1
        if writer.append(f"word{i} "):
            print(f"committed {len(writer.text)}", flush=True)
        time.sleep(0.005)
    """
)


def test_sigkill_mid_answer_keeps_turn_and_partial_answer(db_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        committed = 0
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for a few real commits, then kill -9
            committed = int(line.split()[1])
            if committed > 60:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    s = ChatStore(db_path)
    (conv,) = s.conversations()
    user, answer = s.messages(conv.id)
    assert (user.role, user.content, user.status) == ("user", "Tell me a long story.", "complete")
    assert answer.status == "interrupted"
    assert answer.content.startswith("word1 word2 ")
    assert len(answer.content) >= committed  # at least what was reported committed
    assert s.recovered_messages == 1
    s.close()


def test_rename_delete_and_ordering(store: ChatStore) -> None:
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    store.add_message(a.id, "user", "bump a")  # a becomes most recent
    assert [c.title for c in store.conversations()] == ["a", "b"]
    store.rename(b.id, "  Paris \n trip ")
    assert store.conversation(b.id).title == "Paris trip"
    store.rename(b.id, "   ")
    assert store.conversation(b.id).title == "New chat"
    store.delete_conversation(a.id)
    assert [c.id for c in store.conversations()] == [b.id]
    assert store.messages(a.id) == []  # cascade
    assert store.search("bump") == []  # and out of the index


def test_delete_messages_from_for_regenerate(store: ChatStore) -> None:
    c = store.create_conversation()
    u1 = store.add_message(c.id, "user", "one")
    store.add_message(c.id, "assistant", "uno")
    u2 = store.add_message(c.id, "user", "two")
    store.add_message(c.id, "assistant", "dos")
    store.delete_messages_from(u2.id)
    assert [m.content for m in store.messages(c.id)] == ["one", "uno"]
    store.update_message(u1.id, content="ONE")
    assert store.search("dos") == []
    assert store.search("ONE")[0].message_id == u1.id


def test_search_words_prefix_titles_and_hostile_input(store: ChatStore) -> None:
    car = store.create_conversation("car")
    store.add_message(car.id, "user", "How do I build a car?")
    store.add_message(car.id, "assistant", "Start with a chassis, then the engine.")
    paris = store.create_conversation("Paris trip")
    store.add_message(paris.id, "user", "What is the capital of France?")
    store.add_message(paris.id, "assistant", "Paris is the capital of France.")

    hits = store.search("chassis")
    assert [(h.conversation_id, h.title) for h in hits] == [(car.id, "car")]
    assert "[[chassis]]" in hits[0].snippet
    assert [h.conversation_id for h in store.search("chas")] == [car.id]  # prefix
    assert [h.conversation_id for h in store.search("capital france")] == [paris.id]
    assert store.search("capital chassis") == []  # all words must match
    # titles match even when no message does
    trip = store.search("trip")
    assert [(h.conversation_id, h.message_id) for h in trip] == [(paris.id, None)]
    # FTS syntax in the query is plain text, never an error
    for hostile in ['"', "AND", "a OR", "NEAR(", "*", "-x", "col:umn", "'); DROP"]:
        store.search(hostile)
    assert store.search("   ") == []
    assert fts_query('say "hi"') == '"say" """hi"""*'


def test_export_import_round_trip(store: ChatStore) -> None:
    c = store.create_conversation("Code", system_prompt="You code.", params={"temperature": 0.2},
                                  model="/m/demo")
    store.add_message(c.id, "user", "Write hello world in C.")
    store.add_message(c.id, "assistant", "```c\nint main(){}\n```", stats={"decode_tps": 9.5})
    store.add_message(c.id, "assistant", "part", status="stopped")
    text = store.export_json(c.id)
    doc = json.loads(text)
    assert doc["format"] == "mixdesk-chat" and len(doc["messages"]) == 3

    new = store.import_json(text)
    assert new.id != c.id
    assert (new.title, new.system_prompt, new.params, new.model) == (
        "Code", "You code.", {"temperature": 0.2}, "/m/demo")
    old = [(m.role, m.content, m.status, m.stats) for m in store.messages(c.id)]
    assert [(m.role, m.content, m.status, m.stats) for m in store.messages(new.id)] == old

    md = store.export_markdown(c.id)
    assert md.startswith("# Code\n")
    assert "**You:**\n\nWrite hello world in C." in md
    assert "```c\nint main(){}\n```" in md
    assert "*(stopped)*" in md


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        "[]",
        '{"format": "other"}',
        '{"format": "mixdesk-chat", "version": 99, "conversation": {}, "messages": []}',
        '{"format": "mixdesk-chat", "version": 1, "conversation": {}}',
        '{"format": "mixdesk-chat", "version": 1, "conversation": {}, '
        '"messages": [{"role": "wizard", "content": "x"}]}',
        '{"format": "mixdesk-chat", "version": 1, "conversation": {"title": 5}, "messages": []}',
        '{"format": "mixdesk-chat", "version": 1, "conversation": {}, '
        '"messages": [{"role": "user", "content": "ok"}, 7]}',
    ],
)
def test_bad_import_raises_typed_error_and_writes_nothing(store: ChatStore, bad: str) -> None:
    c = store.create_conversation("keep")
    store.add_message(c.id, "user", "precious")
    with pytest.raises(ChatImportError) as info:
        store.import_json(bad)
    assert str(info.value).endswith(".")
    assert [x.title for x in store.conversations()] == ["keep"]
    assert [m.content for m in store.messages(c.id)] == ["precious"]


def test_migration_from_older_version_and_refusing_newer(db_path: Path) -> None:
    # a file at version 0 with no tables is migrated (the fresh-file path) ...
    sqlite3.connect(db_path).close()
    s = ChatStore(db_path)
    assert s.schema_version == SCHEMA_VERSION
    s.close()
    # ... a file from a newer mixdesk is refused with a sentence, not touched
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(ChatStoreError, match="newer mixdesk"):
        ChatStore(db_path)


def test_corrupt_file_is_backed_up_and_replaced(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ChatDatabaseCorruptError):
        ChatStore(db_path)
    result = open_chat_store(db_path)
    assert result.backup_path is not None and result.backup_path.exists()
    assert result.backup_path.read_bytes().startswith(b"this is not sqlite")
    assert result.notice is not None and str(result.backup_path) in result.notice
    assert result.store.conversations() == []
    result.store.create_conversation("fresh")
    result.store.close()


def test_locked_file_opens_a_fresh_one_beside_it(db_path: Path) -> None:
    s = ChatStore(db_path)
    s.create_conversation("mine")
    s.close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
    try:
        result = open_chat_store(db_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.notice is not None and "locked" in result.notice
    assert result.store.path != db_path
    assert result.store.conversations() == []
    result.store.close()
    assert [c.title for c in ChatStore(db_path).conversations()] == ["mine"]  # untouched


def test_a_second_store_never_interrupts_a_live_answer(db_path: Path) -> None:
    writer = ChatStore(db_path)
    conv = writer.create_conversation()
    answer = writer.start_answer(conv.id)
    answer.append("still ")
    answer.flush()
    reader = ChatStore(db_path)  # another window, a selftest check, a backup tool
    assert reader.recovered_messages == 0
    assert reader.messages(conv.id)[0].status == "streaming"
    answer.append("going")
    answer.finish()
    assert reader.messages(conv.id)[0].content == "still going"
    reader.close()
    writer.close()


LIVE_WRITER = textwrap.dedent(
    """
    import sys
    from mixdesk.engine.chats import ChatStore
    store = ChatStore(sys.argv[1])
    conv = store.create_conversation()
    w = store.start_answer(conv.id)
    w.append("alive")
    w.flush()
    print("ready", flush=True)
    sys.stdin.readline()  # wait until the parent has looked
    """
)


def test_another_live_process_keeps_its_answer_streaming(db_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(db_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        s = ChatStore(db_path)
        assert s.recovered_messages == 0  # its writer is alive
        s.close()
    finally:
        proc.communicate("\n", timeout=30)
    s = ChatStore(db_path)  # now the writer has exited without finishing
    assert s.recovered_messages == 1
    (conv,) = s.conversations()
    assert [(m.content, m.status) for m in s.messages(conv.id)] == [("alive", "interrupted")]
    s.close()


def test_version_1_file_is_migrated_with_its_data(db_path: Path) -> None:
    from mixdesk.engine.chats import MIGRATIONS, _split_sql  # noqa: PLC0415

    raw = sqlite3.connect(db_path)
    for statement in _split_sql(MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    raw.execute("INSERT INTO conversations (title, created_at, updated_at) VALUES ('old', 1, 1)")
    raw.execute("INSERT INTO messages (conversation_id, role, content, status, created_at, "
                "updated_at) VALUES (1, 'assistant', 'half', 'streaming', 1, 1)")
    raw.commit()
    raw.close()
    s = ChatStore(db_path)
    assert s.schema_version == SCHEMA_VERSION == 2
    assert s.recovered_messages == 1  # a v1 streaming row has no writer: interrupted
    assert [(m.content, m.status) for m in s.messages(1)] == [("half", "interrupted")]
    assert s.search("half")[0].conversation_id == 1
    s.close()
