"""Deletion for good, per kind of deletion and entry point (procs6 F2, F4).

F2 (PostgreSQL): a user who deleted a conversation and a fact of their own, then is deleted
(``delete_user``, ``colloquy users delete``, ``DELETE /v1/me``): the earlier deletions' dead
tuples sit in tables that no longer hold any row of the user; no byte of them may stay in the
relation files. F4 (SQLite): a single deletion (a conversation, a fact) through the library, the
CLI and the HTTP routes leaves no byte of the deleted text in the database file, its ``-wal`` or
its ``-shm``, while another connection (a running server) keeps the database open.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from colloquy import Chat, EchoModel
from colloquy.cli import main
from colloquy.memory.records import Fact
from colloquy.rights import delete_user
from colloquy.server import create_app
from colloquy.store import SQLiteStore, Store
from colloquy.store.users import issue_token
from pg_helpers import throwaway_postgres_store
from server_helpers import bearer, serve_in_thread


def _files_containing(paths: list[Path], needle: bytes) -> list[str]:
    return [p.name for p in paths if p.exists() and needle in p.read_bytes()]


def _pg_files(store: Any) -> list[Path] | None:
    with store.pool.connection() as conn:
        conn.execute("CHECKPOINT")  # flush the pages to the relation files
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        oid = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    try:
        return [p for p in (Path(data_dir) / "base" / str(oid)).iterdir() if p.is_file()]
    except OSError:
        return None


def _plant(store: Store, user: str, marker: str, cid: str) -> str:
    """A conversation carrying ``marker`` + ``C`` and a fact carrying ``marker`` + ``F``, of
    ``user``; returns the fact id."""
    Chat(EchoModel(), store=store, session_id=cid, user_id=user).send(f"secret {marker}C")
    fact = store.add_fact(Fact(user_id=user, subject="secret",  # type: ignore[attr-defined]
                               statement=f"their secret is {marker}F"))
    return str(fact.id)


def _delete_me_over_http(store: Store, user: str, token: str) -> None:
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(token)) as c:
        assert c.delete("/v1/me").status_code == 200


@pytest.mark.parametrize("entry", ["library", "cli", "http"])
def test_postgres_user_deletion_erases_what_the_user_deleted_before(entry: str) -> None:
    store = throwaway_postgres_store()
    try:
        marker = f"zqearlier{uuid.uuid4().hex[:12]}"  # unique: the database is shared
        token = issue_token(store, "bob")  # type: ignore[arg-type]
        fid = _plant(store, "bob", marker, "c_bob")
        # Bob deletes his only conversation and his only fact himself, then is deleted: no
        # table but ``users`` still holds a row of his when he is.
        store.delete_conversation("c_bob")
        assert store.forget_facts("bob", [fid]) == 1  # type: ignore[attr-defined]
        files = _pg_files(store)
        if files is not None:
            assert _files_containing(files, marker.encode()), "dead tuples on disk before"
        if entry == "library":
            report = delete_user(store, "bob")
            assert "VACUUM FULL messages" in report.erasure
        elif entry == "cli":
            url = f"{store.url}?options={quote(f'-csearch_path={store.schema}')}"  # type: ignore[attr-defined]
            assert main(["users", "delete", "bob", "--yes", "--db", url]) == 0
        else:
            _delete_me_over_http(store, "bob", token)
        assert store.list_users() == []  # type: ignore[attr-defined]
        files = _pg_files(store)
        if files is None:
            pytest.skip("the server's data directory is not readable from here")
        assert _files_containing(files, marker.encode()) == []
    finally:
        store.close()


def _cli(*args: str) -> Callable[[Path, str, str], None]:
    def run(db: Path, cid: str, fid: str) -> None:
        argv = [a.format(cid=cid, fid=fid) for a in args]
        assert main([*argv, "--db", str(db)]) == 0
    return run


def _http(method: str, path: str) -> Callable[[SQLiteStore, str, str, str], None]:
    def run(store: SQLiteStore, token: str, cid: str, fid: str) -> None:
        app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)
        with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(token)) as c:
            r = c.request(method, path.format(cid=cid, fid=fid))
            assert r.status_code in (200, 204), r.text
    return run


ENTRIES: dict[str, tuple[str, Any]] = {
    "store.delete_conversation": ("conv", lambda s, t, db, c, f: s.delete_conversation(c)),
    "sessions delete": ("conv", lambda s, t, db, c, f: _cli("sessions", "delete", "--user", "ann",
                                                            "{cid}")(db, c, f)),
    "DELETE /v1/conversations": ("conv", lambda s, t, db, c, f: _http(
        "DELETE", "/v1/conversations/{cid}")(s, t, c, f)),
    "store.forget_facts": ("fact", lambda s, t, db, c, f: s.forget_facts("ann", [f])),
    "memory forget": ("fact", lambda s, t, db, c, f: _cli("memory", "forget", "--user", "ann",
                                                          "{fid}")(db, c, f)),
    "DELETE /v1/memory": ("fact", lambda s, t, db, c, f: _http(
        "DELETE", "/v1/memory/{fid}")(s, t, c, f)),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_sqlite_single_deletion_leaves_no_bytes_in_db_wal_or_shm(entry: str, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    store = SQLiteStore(db)
    server = SQLiteStore(db)  # another connection keeps the database (and its -wal) open
    server.list_conversations()
    what, delete = ENTRIES[entry]
    marker = f"zqsingle{uuid.uuid4().hex[:10]}"
    token = issue_token(store, "ann")  # type: ignore[arg-type]
    fid = _plant(store, "ann", marker, "c_ann")
    Chat(EchoModel(), store=store, session_id="c_keep", user_id="ann").send("kept text")
    needle = (marker + ("C" if what == "conv" else "F")).encode()
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    assert _files_containing(files, needle), "the text is on disk before"
    delete(store, token, db, "c_ann", fid)
    assert _files_containing(files, needle) == []
    # The rest is intact and readable by the other connection.
    assert len(server.load("c_keep")) == 2
    server.close()
    store.close()
