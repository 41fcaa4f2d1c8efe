"""The Store contract, run against every store kind (the ``store`` fixture), and what is
specific to SQLite: WAL mode, migrations, concurrent opening."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from colloquy.errors import ConfigError, ConflictError, ConversationNotFound, StoreError
from colloquy.messages import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.store import (
    Conversation,
    MemoryStore,
    NewMessage,
    SQLiteStore,
    Store,
    new_id,
    open_store,
    resolve_db_url,
)
from colloquy.store.migrations import MIGRATIONS, split_sql
from colloquy.store.sqlite import apply_migrations
from colloquy.usage import Usage


def nm(text: str, role: str = "user", **kw: object) -> NewMessage:
    return NewMessage(message=Message(role=role, content=text), **kw)  # type: ignore[arg-type]


def tick() -> None:
    """Let the clock move, so "newest first" is not decided by a tie."""
    time.sleep(0.003)


# -- conversations ----------------------------------------------------------------------------------


def test_store_satisfies_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_create_get_find(store: Store) -> None:
    conv = store.create_conversation(
        id="c1", user_id="alice", persona="You are terse.", model="echo", title="First",
        meta={"tags": ["a", "b"], "n": 1},
    )
    assert conv == Conversation(
        id="c1", user_id="alice", persona="You are terse.", model="echo", title="First",
        meta={"tags": ["a", "b"], "n": 1}, created_at=conv.created_at, updated_at=conv.updated_at,
        generation=conv.generation,
    )
    assert conv.last_seq == 0
    assert store.get_conversation("c1") == conv
    assert store.find_conversation("c1") == conv
    assert store.find_conversation("nope") is None


def test_create_assigns_a_fresh_id_when_none_is_given(store: Store) -> None:
    a = store.create_conversation()
    b = store.create_conversation()
    assert a.id != b.id
    assert a.id.startswith("c_")
    assert a.user_id is None and a.persona == "" and a.model == "" and a.meta == {}
    assert new_id("s").startswith("s_") and new_id() != new_id()


def test_a_conversation_id_is_unique(store: Store) -> None:
    store.create_conversation(id="dup", persona="first")
    with pytest.raises(StoreError, match="dup"):
        store.create_conversation(id="dup", persona="second")
    assert store.get_conversation("dup").persona == "first"


def test_unknown_conversation_ids_raise_not_found(store: Store) -> None:
    for call in (
        lambda: store.get_conversation("ghost"),
        lambda: store.update_conversation("ghost", title="x"),
        lambda: store.delete_conversation("ghost"),
        lambda: store.append("ghost", [nm("hi")]),
        lambda: store.load("ghost"),
    ):
        with pytest.raises(ConversationNotFound) as info:
            call()
        assert info.value.conversation_id == "ghost"
        assert isinstance(info.value, StoreError)
        assert "ghost" in str(info.value)


def test_list_is_newest_activity_first_and_filtered_by_user(store: Store) -> None:
    a = store.create_conversation(id="a", user_id="alice")
    tick()
    store.create_conversation(id="b", user_id="bob")
    tick()
    store.create_conversation(id="c", user_id="alice")
    tick()
    assert [c.id for c in store.list_conversations()] == ["c", "b", "a"]
    # New activity moves a conversation to the front.
    store.append(a.id, [nm("hi")])
    assert [c.id for c in store.list_conversations()] == ["a", "c", "b"]
    assert [c.id for c in store.list_conversations(user_id="alice")] == ["a", "c"]
    assert [c.id for c in store.list_conversations(user_id="bob")] == ["b"]
    assert store.list_conversations(user_id="carol") == []
    assert [c.id for c in store.list_conversations(limit=2)] == ["a", "c"]
    assert store.list_conversations()[0].last_seq == 1


def test_update_changes_only_what_is_given(store: Store) -> None:
    conv = store.create_conversation(id="u", persona="p1", model="m1", title="t1", meta={"k": 1})
    tick()
    updated = store.update_conversation("u", title="t2")
    assert (updated.title, updated.persona, updated.model, updated.meta) == ("t2", "p1", "m1", {"k": 1})
    assert updated.updated_at > conv.updated_at
    assert updated.created_at == conv.created_at
    updated = store.update_conversation("u", persona="p2", model="m2", meta={"k": 2, "x": [1]})
    assert (updated.title, updated.persona, updated.model, updated.meta) == ("t2", "p2", "m2",
                                                                             {"k": 2, "x": [1]})
    assert store.get_conversation("u") == updated


def test_delete_removes_the_conversation_and_its_messages(store: Store) -> None:
    store.create_conversation(id="d")
    store.append("d", [nm("one"), nm("two", "assistant")])
    store.create_conversation(id="keep")
    store.append("keep", [nm("stays")])
    store.delete_conversation("d")
    assert store.find_conversation("d") is None
    with pytest.raises(ConversationNotFound):
        store.load("d")
    assert [c.id for c in store.list_conversations()] == ["keep"]
    assert [sm.message.text for sm in store.load("keep")] == ["stays"]
    # The id is free again, and the new log starts from 1.
    store.create_conversation(id="d")
    assert store.load("d") == []
    assert [sm.seq for sm in store.append("d", [nm("fresh")])] == [1]


def test_existing_conversations_names_those_still_stored(store: Store) -> None:
    """What the caches' sweep asks (colloquy.caches.sweep_deleted): one query, any number of
    ids, past SQLite's variables per statement too."""
    for cid in ("a", "b", "c"):
        store.create_conversation(id=cid)
    store.delete_conversation("b")
    assert store.existing_conversations([]) == set()
    assert store.existing_conversations(["a", "b", "c", "never"]) == {"a", "c"}
    many = [f"x{i}" for i in range(40_000)] + ["c"]
    assert store.existing_conversations(many) == {"c"}


# -- the log ----------------------------------------------------------------------------------------


def test_append_numbers_from_last_seq_plus_one(store: Store) -> None:
    store.create_conversation(id="c")
    first = store.append("c", [nm("q1"), nm("a1", "assistant")])
    assert [sm.seq for sm in first] == [1, 2]
    assert store.get_conversation("c").last_seq == 2
    second = store.append("c", [nm("q2")])
    assert [sm.seq for sm in second] == [3]
    third = store.append("c", [nm("a2", "assistant"), nm("q3"), nm("a3", "assistant")])
    assert [sm.seq for sm in third] == [4, 5, 6]
    assert store.get_conversation("c").last_seq == 6
    log = store.load("c")
    assert log == first + second + third
    assert [sm.message.text for sm in log] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert all(sm.conversation_id == "c" for sm in log)


def test_appended_messages_without_meta_each_hold_their_own_empty_meta(store: Store) -> None:
    # An empty meta is written as "{}" and read back without the parser: still a new dict for
    # each message, so one changed in place changes no other (nor the next append's).
    store.create_conversation(id="c")
    first, second = store.append("c", [nm("q1"), nm("a1", "assistant")])
    assert first.meta == second.meta == {} and first.meta is not second.meta
    first.meta["x"] = 1
    (third,) = store.append("c", [nm("q2")])
    assert second.meta == third.meta == {}


def test_append_of_nothing_changes_nothing(store: Store) -> None:
    store.create_conversation(id="c")
    assert store.append("c", []) == []
    assert store.get_conversation("c").last_seq == 0
    assert store.load("c") == []


def test_logs_of_conversations_are_independent(store: Store) -> None:
    store.create_conversation(id="x")
    store.create_conversation(id="y")
    store.append("x", [nm("x1"), nm("x2", "assistant")])
    assert [sm.seq for sm in store.append("y", [nm("y1")])] == [1]
    assert [sm.message.text for sm in store.load("x")] == ["x1", "x2"]
    assert [sm.message.text for sm in store.load("y")] == ["y1"]


def test_expected_seq_detects_a_concurrent_writer(store: Store) -> None:
    store.create_conversation(id="c")
    store.append("c", [nm("q1")], expected_seq=0)
    store.append("c", [nm("a1", "assistant")], expected_seq=1)
    # Another writer appended after we read last_seq == 2.
    store.append("c", [nm("q2")])
    with pytest.raises(ConflictError) as info:
        store.append("c", [nm("stale")], expected_seq=2)
    assert isinstance(info.value, StoreError)
    assert info.value.conversation_id == "c"
    assert [sm.message.text for sm in store.load("c")] == ["q1", "a1", "q2"], "nothing interleaved"
    assert store.get_conversation("c").last_seq == 3
    assert [sm.seq for sm in store.append("c", [nm("ok", "assistant")], expected_seq=3)] == [4]


def test_load_after_seq_and_limit(store: Store) -> None:
    store.create_conversation(id="c")
    store.append("c", [nm(f"m{i}", "user" if i % 2 else "assistant") for i in range(1, 11)])
    seqs = lambda log: [sm.seq for sm in log]  # noqa: E731
    assert seqs(store.load("c")) == list(range(1, 11))
    assert seqs(store.load("c", after_seq=7)) == [8, 9, 10]
    assert seqs(store.load("c", limit=3)) == [1, 2, 3]
    assert seqs(store.load("c", after_seq=4, limit=2)) == [5, 6]
    assert seqs(store.load("c", after_seq=9, limit=5)) == [10]
    assert store.load("c", after_seq=10) == []
    assert seqs(store.load("c", after_seq=-3, limit=2)) == [1, 2]  # no slicing from the end
    assert store.load("c", after_seq=50) == []
    assert store.load("c", limit=0) == []
    store.create_conversation(id="empty")
    assert store.load("empty") == []


def test_content_usage_cost_model_and_meta_round_trip(store: Store) -> None:
    store.create_conversation(id="c")
    usage = Usage(input_tokens=1200, output_tokens=340, cache_write_tokens=56, cache_read_tokens=7800)
    rich_user = Message(role="user", content=[
        ToolResultBlock(tool_use_id="tu_1", content=[TextBlock(text="line"), ImageBlock(
            source={"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"})],
            is_error=True),
        TextBlock(text="é ünïcode ✓ \"quotes\" \n newline", cache_control={"type": "ephemeral"}),
        ImageBlock(source={"type": "url", "url": "https://example.com/x.png"}),
    ])
    reply = Message(role="assistant", content=[
        TextBlock(text="calling"),
        ToolUseBlock(id="tu_2", name="search", input={"q": "x", "n": 3, "deep": {"a": [1, None]}}),
    ])
    meta = {"stop_reason": "tool_use", "nested": {"list": [1, 2.5, "x", None, True]}}
    appended = store.append("c", [
        NewMessage(message=rich_user, meta={"source": "import"}),
        NewMessage(message=reply, usage=usage, model="claude-sonnet-4-5", cost_usd=0.012345, meta=meta),
        NewMessage(message=Message.assistant("zero"), usage=Usage(), model="echo", cost_usd=0.0),
    ])
    loaded = store.load("c")
    assert loaded == appended
    u, a, z = loaded
    assert u.message == rich_user
    assert u.usage is None and u.model is None and u.cost_usd is None
    assert u.meta == {"source": "import"}
    assert a.message == reply
    assert a.usage == usage
    assert a.model == "claude-sonnet-4-5"
    assert a.cost_usd == pytest.approx(0.012345)
    assert a.meta == meta
    assert z.usage == Usage() and z.cost_usd == 0.0, "a zero usage is not lost as None"
    assert u.created_at <= a.created_at and u.created_at > 0


def test_the_store_keeps_its_own_copy_of_meta(store: Store) -> None:
    meta = {"tags": ["a"]}
    store.create_conversation(id="c", meta=meta)
    msg_meta = {"k": ["v"]}
    store.append("c", [NewMessage(message=Message.user("hi"), meta=msg_meta)])
    meta["tags"].append("changed later")
    msg_meta["k"].append("changed later")
    assert store.get_conversation("c").meta == {"tags": ["a"]}
    assert store.load("c")[0].meta == {"k": ["v"]}
    new_meta = {"tags": ["b"]}
    store.update_conversation("c", meta=new_meta)
    new_meta["tags"].append("changed later")
    assert store.get_conversation("c").meta == {"tags": ["b"]}


def test_concurrent_appends_from_threads_never_share_a_seq(store: Store) -> None:
    store.create_conversation(id="c")
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(10):
                store.append("c", [nm(f"w{w}-{i}"), nm(f"w{w}-{i} reply", "assistant")])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    log = store.load("c")
    assert [sm.seq for sm in log] == list(range(1, 81))
    assert store.get_conversation("c").last_seq == 80
    # Each append's two messages stay together.
    for q, r in zip(log[::2], log[1::2], strict=True):
        assert r.message.text == q.message.text + " reply"


# -- open_store -------------------------------------------------------------------------------------


def test_open_store_picks_the_store_from_the_url(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    assert isinstance(open_store(":memory:"), MemoryStore)
    s = open_store(str(tmp_path / "a.db"))
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "a.db"
    s.close()
    s = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "b.db"
    s.close()
    with pytest.raises(ConfigError):
        open_store("mysql://localhost/db")
    s = open_store(environ={"COLLOQUY_DB": str(tmp_path / "env.db")})
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "env.db"
    s.close()


def test_db_url_resolution_order() -> None:
    assert resolve_db_url("arg.db", {"COLLOQUY_DB": "env.db"}) == "arg.db"
    assert resolve_db_url(None, {"COLLOQUY_DB": "env.db"}) == "env.db"
    assert resolve_db_url(None, {}).endswith("colloquy.db")


# -- SQLite specifics -------------------------------------------------------------------------------


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def schema(path: Path) -> list[tuple[str, str, str]]:
    with raw(path) as conn:
        return conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()


def recorded(path: Path) -> list[str]:
    with raw(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY rowid")]


def test_sqlite_uses_wal_mode(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "wal.db")
    assert s._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1
    s.close()
    # WAL is a property of the file: any later connection sees it.
    with raw(tmp_path / "wal.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_are_applied_to_a_blank_database_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    SQLiteStore(path).close()
    assert recorded(path) == [m.name for m in MIGRATIONS]
    names = {name for _, name, _ in schema(path)}
    assert {"conversations", "messages", "schema_migrations"} <= names


def test_reopening_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    SQLiteStore(path).close()
    with raw(path) as conn:
        before = conn.execute("SELECT name, applied_at FROM schema_migrations").fetchall()
    s = SQLiteStore(path)
    assert apply_migrations(s._conn()) == []
    s.close()
    with raw(path) as conn:
        assert conn.execute("SELECT name, applied_at FROM schema_migrations").fetchall() == before


def test_migrations_are_unique_and_named() -> None:
    names = [m.name for m in MIGRATIONS]
    assert len(names) == len(set(names))
    assert all(m.name and m.sqlite.strip() for m in MIGRATIONS)


@pytest.mark.parametrize("k", range(len(MIGRATIONS) + 1))
def test_migrating_from_every_prefix_of_the_list(tmp_path: Path, k: int) -> None:
    """A database in the field may stop at any older version: opening it brings it up to date,
    to exactly the schema a blank database gets."""
    blank = tmp_path / "blank.db"
    SQLiteStore(blank).close()

    old = tmp_path / f"prefix{k}.db"
    conn = raw(old)
    assert apply_migrations(conn, MIGRATIONS[:k]) == [m.name for m in MIGRATIONS[:k]]
    conn.close()
    assert recorded(old) == [m.name for m in MIGRATIONS[:k]]

    conn = raw(old)
    assert apply_migrations(conn) == [m.name for m in MIGRATIONS[k:]]
    conn.close()
    assert recorded(old) == [m.name for m in MIGRATIONS]
    assert schema(old) == schema(blank)

    s = SQLiteStore(old)
    s.create_conversation(id="c")
    assert [sm.seq for sm in s.append("c", [nm("works")])] == [1]
    s.close()


def test_a_failing_migration_rolls_back_and_is_not_recorded(tmp_path: Path) -> None:
    from colloquy.store.migrations import Migration

    path = tmp_path / "bad.db"
    SQLiteStore(path).close()
    bad = Migration("9999_broken", sqlite="CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;")
    conn = raw(path)
    with pytest.raises(sqlite3.Error):
        apply_migrations(conn, [*MIGRATIONS, bad])
    conn.close()
    assert recorded(path) == [m.name for m in MIGRATIONS]
    assert "half" not in {name for _, name, _ in schema(path)}


def test_concurrent_opening_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    n = 8
    barrier = threading.Barrier(n)
    stores: list[SQLiteStore] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def open_one(i: int) -> None:
        try:
            barrier.wait()
            s = SQLiteStore(path)
            s.create_conversation(id=f"t{i}")
            s.append(f"t{i}", [nm(f"from thread {i}")])
            with lock:
                stores.append(s)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert recorded(path) == [m.name for m in MIGRATIONS], "each migration applied exactly once"
    check = SQLiteStore(path)
    assert sorted(c.id for c in check.list_conversations()) == sorted(f"t{i}" for i in range(n))
    check.close()
    for s in stores:
        s.close()


def test_sqlite_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    s = SQLiteStore(path)
    s.create_conversation(id="c", persona="pirate", model="echo")
    s.append("c", [nm("ahoy"), nm("arr", "assistant", usage=Usage(input_tokens=3), model="echo")])
    s.close()
    s = SQLiteStore(path)
    assert s.get_conversation("c").persona == "pirate"
    assert s.get_conversation("c").last_seq == 2
    log = s.load("c")
    assert [sm.message.text for sm in log] == ["ahoy", "arr"]
    assert log[1].usage == Usage(input_tokens=3)
    assert [sm.seq for sm in s.append("c", [nm("again")])] == [3]
    s.close()


def test_sqlite_store_is_usable_from_other_threads(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "threads.db")
    s.create_conversation(id="c")
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(s.append("c", [nm("from a thread")])))
    t.start()
    t.join()
    assert [sm.message.text for sm in s.load("c")] == ["from a thread"]
    s.close()


def test_split_sql_keeps_trigger_bodies_whole() -> None:
    script = """
    CREATE TABLE t (x INTEGER);
    CREATE TRIGGER t_ai AFTER INSERT ON t BEGIN
        UPDATE t SET x = x + 1;
        DELETE FROM t WHERE x > 10;
    END;
    CREATE INDEX t_x ON t (x);
    """
    parts = split_sql(script)
    assert len(parts) == 3
    assert parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
    conn = sqlite3.connect(":memory:")
    for p in parts:
        conn.execute(p)
    conn.close()
