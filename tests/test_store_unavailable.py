"""The database restarts, or stays locked (issue 12, item 7): the service recovers by itself, a
turn that cannot reach the database answers 503 with Retry-After (never 500), and a retried
request is stored once.

PostgreSQL: a throwaway cluster of the test's own (tests/pg_cluster.py; never the shared
server) is restarted and stopped under a real ``colloquy serve`` process. SQLite: another
process holds the write lock past the busy timeout.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from colloquy import Chat, EchoModel, SQLiteStore
from colloquy.context import problems
from colloquy.errors import StoreUnavailable
from colloquy.server import create_app
from colloquy.store import open_store
from colloquy.store.users import issue_token
from pg_cluster import Cluster
from server_helpers import add_user, bearer, serve_in_thread, serve_subprocess


@pytest.fixture
def postgres_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.close()


def send(client: httpx.Client, cid: str, text: str, key: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"content": text}
    if key is not None:
        body["idempotency_key"] = key
    return client.post(f"/v1/conversations/{cid}/messages", json=body)


def stored_once(db: str, cid: str, texts: list[str]) -> None:
    store = open_store(db)
    try:
        log = store.load(cid)
    finally:
        store.close()
    assert problems([sm.message for sm in log]) == []
    assert [sm.seq for sm in log] == list(range(1, len(log) + 1))
    assert [sm.message.text for sm in log if sm.role == "user"] == texts


def test_postgres_restarts_and_stops_under_a_running_service(postgres_cluster: Cluster,
                                                             tmp_path: Path) -> None:
    db = postgres_cluster.url
    token = add_user(db, "ada")
    with serve_subprocess(db, log=tmp_path / "serve.log") as url:
        client = httpx.Client(base_url=url, headers=bearer(token), timeout=60)
        cid = client.post("/v1/conversations", json={}).json()["id"]
        assert send(client, cid, "before", "k1").status_code == 200

        # A restart between turns: pooled connections and the turn-lock connection are dead;
        # the next turns find new ones by themselves.
        postgres_cluster.restart()
        for i in range(3):
            r = send(client, cid, f"after restart {i}", f"k2-{i}")
            assert r.status_code == 200, r.text

        # Down: 503 with Retry-After, on the native and the OpenAI-compatible routes.
        postgres_cluster.stop()
        r = send(client, cid, "while down", "k3")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "store_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        oa = client.post("/v1/chat/completions", headers={"X-Colloquy-Conversation": cid},
                         json={"model": "echo", "messages": [{"role": "user", "content": "oa down"}]})
        assert oa.status_code == 503 and "retry-after" in oa.headers

        # Up again: the client retries with the same key, and the turn is stored once.
        postgres_cluster.start()
        r = send(client, cid, "while down", "k3")
        assert r.status_code == 200, r.text
        again = send(client, cid, "while down", "k3")
        assert again.status_code == 200 and again.json()["seq"] == r.json()["seq"]
        client.close()
    assert "store_unavailable (503)" in (tmp_path / "serve.log").read_text()
    stored_once(db, cid, ["before", "after restart 0", "after restart 1", "after restart 2",
                          "while down"])


class WriteLock:
    """Another process's write transaction on the SQLite file (a separate connection)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_sqlite_locked_past_the_busy_timeout_answers_503_and_a_retry_stores_once(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.3)
    token = issue_token(store, "ada")
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)
    try:
        with serve_in_thread(app) as url:
            client = httpx.Client(base_url=url, headers=bearer(token), timeout=60)
            cid = client.post("/v1/conversations", json={}).json()["id"]
            assert send(client, cid, "first", "k1").status_code == 200
            lock = WriteLock(path)
            try:
                r = send(client, cid, "second", "k2")
                assert r.status_code == 503, r.text
                assert r.json()["error"]["type"] == "store_unavailable"
                assert int(r.headers["retry-after"]) >= 1
            finally:
                lock.release()
            assert send(client, cid, "second", "k2").status_code == 200
            assert send(client, cid, "second", "k2").json()["replayed"] is True
            client.close()
        stored_once(str(path), cid, ["first", "second"])
    finally:
        store.close()


def test_a_lock_released_within_the_busy_timeout_is_waited_for(tmp_path: Path) -> None:
    """The library's side: a short lock is waited out; a long one raises StoreUnavailable,
    with the user's message not stored, and the conversation goes on afterwards."""
    path = tmp_path / "wait.db"
    store = SQLiteStore(path, busy_timeout=2.0)
    chat = Chat(EchoModel(), store=store, session_id="c")
    chat.send("one")
    lock = WriteLock(path)
    threading.Timer(0.3, lock.release).start()
    t0 = time.monotonic()
    assert chat.send("two").seq == 4 and time.monotonic() - t0 >= 0.25
    short = SQLiteStore(path, busy_timeout=0.2)
    lock = WriteLock(path)
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            Chat(EchoModel(), store=short, session_id="c").send("three")
    finally:
        lock.release()
    assert [sm.message.text for sm in store.load("c") if sm.role == "user"] == ["one", "two"]
    assert Chat(EchoModel(), store=short, session_id="c").send("three").seq == 6
    short.close()
    store.close()
