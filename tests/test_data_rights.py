"""Export, import, delete for good, and retention, on every store kind.

The delete tests plant a unique string the user typed, delete the user, and scan the database
files themselves (SQLite: main file, -wal and -shm; PostgreSQL: every relation file of the
database) for its bytes.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from colloquy import Chat, EchoModel
from colloquy.cli import main
from colloquy.memory.records import Fact, Summary
from colloquy.rights import (
    delete_user,
    discover_tables,
    export_user,
    import_user,
    parse_age,
    purge_conversations,
    register_user_table,
    user_tables,
)
from colloquy.store import SQLiteStore, Store
from colloquy.errors import ConfigError, StoreError
from pg_helpers import throwaway_postgres_store


def populate(store: Store, user: str, marker: str, conversations: int = 2) -> list[str]:
    """Conversations, a summary, a cursor, a fact and a service user, all carrying ``marker``."""
    ids = []
    for i in range(conversations):
        chat = Chat(EchoModel(), store=store, session_id=f"c_{user}_{i}", user_id=user)
        chat.send(f"my secret is {marker} number {i}")
        chat.send("and a second message")
        ids.append(chat.session_id)
    store.save_summary(Summary(conversation_id=ids[0], start_seq=1, end_seq=2,
                               text=f"the user said {marker}"))
    store.set_memory_cursor(ids[0], "facts", 2)
    store.add_fact(Fact(user_id=user, subject="secret", statement=f"their secret is {marker}",
                        source_conversation=ids[0], source_seq=1))
    store.add_user(user, f"hash-{marker}")  # type: ignore[attr-defined]
    return ids


def all_rows_text(store: Store) -> str:
    """Every row of every table, as text (SQL stores), to search for leftovers."""
    out = []
    tables = discover_tables(store)
    with store.transaction(write=False) as conn:  # type: ignore[attr-defined]
        for table in tables:
            out.extend(repr(r) for r in conn.execute(f'SELECT * FROM "{table}"').fetchall())
    return "\n".join(out)


def test_export_holds_everything_about_the_user_and_nothing_else(store: Store) -> None:
    populate(store, "alice", "zqalicemarker")
    populate(store, "bob", "zqbobmarker", conversations=1)
    data = export_user(store, "alice")
    dumped = json.dumps(data)
    assert "zqbobmarker" not in dumped and "bob" not in dumped
    assert data["user_id"] == "alice" and len(data["sessions"]) == 2
    texts = [m["message"]["content"][0]["text"] for s in data["sessions"] for m in s["messages"]]
    assert "my secret is zqalicemarker number 0" in texts and len(texts) == 8
    if "tables" in data:  # SQL stores: every table that holds user data, derived ones included
        tables = data["tables"]
        assert {"conversations", "messages", "summaries", "facts", "memory_cursors", "users"} <= set(tables)
        assert len(tables["messages"]["rows"]) == 8 and len(tables["facts"]["rows"]) == 1
        assert len(tables["summaries"]["rows"]) == 1 and len(tables["users"]["rows"]) == 1
        assert "schema_migrations" not in tables
    else:
        assert data["facts"][0]["statement"] == "their secret is zqalicemarker"
        assert data["summaries"][0]["text"] == "the user said zqalicemarker"


def test_delete_removes_every_row_about_the_user_and_import_restores_them(store: Store) -> None:
    populate(store, "alice", "zqalicemarker")
    populate(store, "bob", "zqbobmarker", conversations=1)
    exported = export_user(store, "alice")
    report = delete_user(store, "alice")
    assert report.conversations == 2 and report.rows["messages"] == 8
    assert store.list_conversations(user_id="alice") == []
    assert store.list_facts("alice", include_retired=True) == []
    if "tables" in exported:
        leftovers = all_rows_text(store)
        assert "zqalicemarker" not in leftovers and "alice" not in leftovers
        assert "zqbobmarker" in leftovers
    assert len(store.load("c_bob_0")) == 4 and store.list_facts("bob")

    report2 = import_user(store, json.loads(json.dumps(exported)))
    assert report2.conversations == 2
    again = export_user(store, "alice")
    exported.pop("exported_at"), again.pop("exported_at")
    if "tables" in exported:  # SQL: row for row, timestamps included
        # ... but for the account: a file never creates a user or a token (users add does).
        assert report2.skipped_tables == ["users"] and again["tables"]["users"]["rows"] == []
        exported["tables"].pop("users"), again["tables"].pop("users")
        assert again == exported
    else:  # the Store interface re-creates conversations (new timestamps), same content
        def content(d: dict[str, Any]) -> dict[str, Any]:
            return {s["conversation"]["id"]: (s["conversation"]["title"], [m["message"] for m in s["messages"]])
                    for s in d["sessions"]}
        assert content(again) == content(exported)
        assert again["facts"] == exported["facts"] and again["summaries"] == exported["summaries"]
    chat = Chat(EchoModel(), store=store, session_id="c_alice_0")  # and it continues
    assert chat.send("still there?").seq == 6


def test_import_refuses_to_overwrite_unless_replace(store: Store) -> None:
    populate(store, "alice", "zqalicemarker", conversations=1)
    exported = export_user(store, "alice")
    with pytest.raises(StoreError, match="--replace"):
        import_user(store, exported)
    report = import_user(store, exported, replace=True)
    assert report.conversations == 1 and len(store.load("c_alice_0")) == 4
    with pytest.raises(ConfigError, match="not a colloquy user export"):
        import_user(store, {"format": "something else"})


def test_export_moves_between_back_ends(tmp_path: Path) -> None:
    """An export from SQLite restores into PostgreSQL and back (same tables, same rows; the
    account is never imported)."""
    src = SQLiteStore(tmp_path / "a.db")
    populate(src, "alice", "zqalicemarker")
    data = export_user(src, "alice")
    data["tables"]["users"]["rows"] = []
    pg = throwaway_postgres_store()
    try:
        import_user(pg, data)
        again = export_user(pg, "alice")
        assert again["sessions"] == data["sessions"] and again["tables"] == data["tables"]
        dst = SQLiteStore(tmp_path / "b.db")
        import_user(dst, again)
        assert export_user(dst, "alice")["tables"] == data["tables"]
        dst.close()
    finally:
        pg.close()
        src.close()


def _files_containing(paths: list[Path], needle: bytes) -> list[str]:
    found = []
    for p in paths:
        if p.exists() and needle in p.read_bytes():
            found.append(p.name)
    return found


def test_sqlite_delete_leaves_no_bytes_in_the_database_files(tmp_path: Path) -> None:
    db = tmp_path / "rights.db"
    store = SQLiteStore(db)
    other_reader = SQLiteStore(db)  # another process/thread with the database open
    marker = "zqplanted7f3a9c"
    populate(store, "alice", marker, conversations=3)
    populate(store, "bob", "zqbobmarker")
    other_reader.list_conversations()
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    assert _files_containing(files, marker.encode()), "the marker should be on disk before"

    report = delete_user(store, "alice")
    assert report.rows["messages"] == 12 and "VACUUM" in report.erasure
    assert "wal_checkpoint(TRUNCATE)" in report.erasure
    assert _files_containing(files, marker.encode()) == []
    assert _files_containing(files, b"alice") == []
    # The others' data is intact, readable by both connections, and writes go on.
    assert len(other_reader.load("c_bob_0")) == 4
    Chat(EchoModel(), store=store, session_id="c_bob_0").send("more")
    assert len(other_reader.load("c_bob_0")) == 6
    other_reader.close()
    store.close()


def _pg_data_files(store: Any) -> list[Path] | None:
    """Every relation file of the test database, or None when the server's data directory is
    not readable from here (not root, or the server is elsewhere)."""
    with store.pool.connection() as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        oid = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    base = Path(data_dir) / "base" / str(oid)
    try:
        return [p for p in base.iterdir() if p.is_file()]
    except OSError:
        return None


def test_postgres_delete_leaves_no_bytes_in_the_relation_files() -> None:
    store = throwaway_postgres_store()
    try:
        # Unique per run: other runs (other worktrees, CI) plant theirs in the same database,
        # whose relation files this test scans.
        marker = f"zqplantedpg{uuid.uuid4().hex[:12]}"
        populate(store, "alice", marker, conversations=3)
        populate(store, "bob", "zqbobmarker")
        with store.pool.connection() as conn:
            conn.execute("CHECKPOINT")  # flush the pages to the relation files
        files = _pg_data_files(store)
        if files is not None:
            assert _files_containing(files, marker.encode()), "the marker should be on disk before"

        report = delete_user(store, "alice")
        assert report.rows["messages"] == 12
        assert {"VACUUM FULL messages", "VACUUM FULL conversations", "VACUUM FULL facts"} <= set(report.erasure)
        assert marker not in all_rows_text(store)
        files = _pg_data_files(store)
        if files is not None:
            assert _files_containing(files, marker.encode()) == []
        assert len(store.load("c_bob_0")) == 4
    finally:
        store.close()


def test_purge_drops_idle_conversations_with_their_derived_rows(store: Store) -> None:
    old = Chat(EchoModel(), store=store, session_id="c_old", user_id="alice")
    old.send("an old conversation")
    store.save_summary(Summary(conversation_id="c_old", start_seq=1, end_seq=2, text="old"))
    store.add_fact(Fact(user_id="alice", subject="s", statement="a lasting fact",
                        source_conversation="c_old", source_seq=1))
    time.sleep(0.02)
    new = Chat(EchoModel(), store=store, session_id="c_new", user_id="alice")
    new.send("a fresh one")
    a, b = store.get_conversation("c_old").updated_at, store.get_conversation("c_new").updated_at
    now = b + 1.0
    report = purge_conversations(store, older_than=now - (a + b) / 2, now=now)
    assert report.conversations == 1 and report.rows["messages"] == 2
    assert store.find_conversation("c_old") is None and store.find_conversation("c_new")
    assert store.list_summaries("c_old") == []
    assert [f.statement for f in store.list_facts("alice")] == ["a lasting fact"]  # facts stay


def test_parse_age() -> None:
    assert parse_age("30d") == 30 * 86400 and parse_age("12h") == 43200
    assert parse_age("2w") == 14 * 86400 and parse_age("90m") == 5400 and parse_age("45s") == 45
    for unitless in ("7", "0", " 30 "):  # a slip there would delete every conversation
        with pytest.raises(ConfigError, match="unit"):
            parse_age(unitless)
    with pytest.raises(ConfigError, match="30d"):
        parse_age("a month")


def test_tables_are_discovered_by_convention_and_registry(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    with store.transaction() as conn:
        conn.execute("CREATE TABLE usage_log (user_id TEXT, tokens INTEGER)")
        conn.execute("CREATE TABLE notes (conversation_id TEXT, body TEXT)")
        conn.execute("CREATE TABLE owned (owner TEXT, body TEXT)")
        conn.execute("CREATE TABLE unrelated (body TEXT)")
        conn.execute("CREATE VIRTUAL TABLE search USING fts5(conversation_id UNINDEXED, body)")
    register_user_table("owned", user_column="owner")
    specs = user_tables(discover_tables(store))
    assert {"usage_log", "notes", "owned", "search", "messages", "facts"} <= set(specs)
    assert "unrelated" not in specs and "schema_migrations" not in specs
    assert not any(t.startswith("search_") for t in discover_tables(store))  # FTS shadows
    chat = Chat(EchoModel(), store=store, session_id="c1", user_id="carol")
    chat.send("zqsearchable words")
    with store.transaction() as conn:
        conn.execute("INSERT INTO usage_log VALUES ('carol', 5)")
        conn.execute("INSERT INTO notes VALUES ('c1', 'zqnote')")
        conn.execute("INSERT INTO owned VALUES ('carol', 'zqowned')")
        conn.execute("INSERT INTO search VALUES ('c1', 'zqsearchable words')")
    exported = export_user(store, "carol")["tables"]
    assert exported["owned"]["rows"] == [["carol", "zqowned"]] and exported["search"]["rows"]
    delete_user(store, "carol")
    leftovers = all_rows_text(store)
    assert "carol" not in leftovers and "zq" not in leftovers
    db = tmp_path / "r.db"
    assert _files_containing([db, Path(f"{db}-wal")], b"zqsearchable") == []
    store.close()


def test_cli_export_delete_import_purge_rename(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cli.db")
    store = SQLiteStore(db)
    populate(store, "dana", "zqdanamarker", conversations=1)
    store.close()
    out = tmp_path / "dana.json"
    assert main(["users", "export", "dana", "-o", str(out), "--db", db]) == 0
    assert json.loads(out.read_text())["user_id"] == "dana"

    assert main(["users", "delete", "dana", "--db", db]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["users", "delete", "dana", "--yes", "--db", db]) == 0
    assert "deleted user dana: 1 conversations" in capsys.readouterr().err
    assert SQLiteStore(db).list_conversations(user_id="dana") == []

    assert main(["users", "import", str(out), "--db", db]) == 0
    assert "imported 1 conversations of dana" in capsys.readouterr().err

    assert main(["sessions", "rename", "c_dana_0", "Trip  to Lisbon", "--db", db]) == 0
    capsys.readouterr()
    assert main(["sessions", "list", "--user", "dana", "--db", db]) == 0
    assert "Trip to Lisbon" in capsys.readouterr().out

    assert main(["purge", "--older-than", "1d", "--dry-run", "--db", db]) == 0
    assert "0 conversations idle" in capsys.readouterr().err
    assert main(["purge", "--older-than", "0s", "--db", db]) == 2  # not without --yes
    assert "add --yes to confirm" in capsys.readouterr().err
    assert main(["purge", "--older-than", "0s", "--yes", "--db", db]) == 0
    assert "purged 1 conversations" in capsys.readouterr().err
    assert main(["purge", "--older-than", "soon", "--db", db]) == 2
    assert main(["sessions", "rename", "c_nope", "x", "--db", db]) == 1


def test_deleted_conversations_leave_nothing_in_the_processs_memory(store: Store) -> None:
    """Recall indexes and summary caches of a running process forget deleted conversations,
    whichever way they are deleted: users delete, purge, or one conversation."""
    from colloquy import ComposedPolicy, RecallPart, RecentTurns, Summariser, SummaryPart
    from colloquy.models import ScriptedModel

    recall = RecallPart()
    summary = SummaryPart(Summariser(ScriptedModel([f"- point {i}" for i in range(100)])),
                          min_new_turns=1)
    policy = ComposedPolicy(300, parts=[summary, recall], recent=RecentTurns(turns=1))

    def chat(session: str, user: str) -> str:
        c = Chat(EchoModel(), store=store, session_id=session, user_id=user, policy=policy)
        for i in range(6):
            c.send(f"UNIQUE-{session} message {i} " + "words " * 20)
        return session

    ann, bob, old = chat("ann-1", "ann"), chat("bob-1", "bob"), chat("old-1", "carl")
    assert {ann, bob, old} <= set(recall._indexes) and {ann, bob, old} <= set(summary._made)

    delete_user(store, "ann")
    assert ann not in recall._indexes and ann not in summary._made
    assert bob in recall._indexes and bob in summary._made  # others keep theirs

    store.delete_conversation(bob)
    assert bob not in recall._indexes and bob not in summary._made

    purge_conversations(store, older_than=0, now=time.time() + 10)
    assert old not in recall._indexes and old not in summary._made
