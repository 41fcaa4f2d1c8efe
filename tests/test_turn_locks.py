"""Turn locks on every store: ``try_lock`` (never waits; a release callable from any thread)
beside the blocking ``lock``, across threads and real processes; on PostgreSQL every lock of a
store on one connection, freed at once when its process is killed, re-taken after the lock
connection dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colloquy.errors import ConversationBusy
from colloquy.store import Store
from colloquy.store.turns import TurnStore
from test_concurrency import Backend, backend  # noqa: F401 - the fixture (sqlite, postgres)

HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from colloquy.store import open_store
args = sys.argv[1:]
if args[0] == "--schema":
    from colloquy.store.postgres import PostgresStore
    store = PostgresStore(args[2], schema=args[1], max_size=2)
    ids = args[3:]
else:
    store = open_store(args[1])
    ids = args[2:]
releases = [store.try_lock(cid) for cid in ids]
assert all(releases), "the holder could not take its locks"
print("READY", flush=True)
time.sleep(120)
"""
SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_every_store_is_a_turn_store(store: Store) -> None:
    assert isinstance(store, TurnStore)


def test_try_lock_never_waits_and_its_release_works_from_any_thread(store: Store) -> None:
    s: Any = store
    release = s.try_lock("c_a")
    assert callable(release)
    assert s.try_lock("c_a") is None  # held: no wait, no lock
    other = s.try_lock("c_b")  # other conversations are free
    assert other is not None
    other()

    waited: list[BaseException] = []

    def wait_briefly() -> None:
        try:
            with s.lock("c_a", timeout=0.2):
                pass
        except ConversationBusy as e:
            waited.append(e)

    t = threading.Thread(target=wait_briefly)
    t.start()
    t.join()
    assert len(waited) == 1 and "c_a" in str(waited[0])

    # Released from another thread than the one that took it; a second call does nothing.
    t = threading.Thread(target=release)
    t.start()
    t.join()
    release()
    again = s.try_lock("c_a")
    assert again is not None
    again()

    # A waiting lock() gets the conversation as soon as a try_lock holder releases it.
    held = s.try_lock("c_a")
    got = threading.Event()

    def waiter() -> None:
        with s.lock("c_a", timeout=10):
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    assert not got.is_set()
    held()
    t.join(timeout=10)
    assert got.is_set()
    with s.lock("c_a", timeout=1):
        assert s.try_lock("c_a") is None  # lock() and try_lock() are one lock




def holder(backend: Backend, ids: list[str]) -> subprocess.Popen[str]:
    if backend.kind == "sqlite":
        args = ["--db", backend.args[1]]
    else:
        store: Any = backend.store
        args = ["--schema", store.schema, store.url]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=SRC), *args, *ids],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "READY":
        proc.kill()
        raise AssertionError(f"holder failed: {proc.stderr.read() if proc.stderr else ''}")
    return proc


def test_a_killed_holder_frees_its_locks_at_once(backend: Backend) -> None:
    s: Any = backend.store
    ids = [f"c_{i}" for i in range(50)]
    proc = holder(backend, ids)
    try:
        assert all(s.try_lock(cid) is None for cid in ids[:5])  # held by the other process
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 2  # the kernel closes the dead process's files at once
        first = s.try_lock(ids[0])
        while first is None and time.monotonic() < deadline:
            time.sleep(0.01)
            first = s.try_lock(ids[0])
        releases = [first, *(s.try_lock(cid) for cid in ids[1:])]
        assert all(releases), "a dead process's lock outlived it"
        for release in releases:
            release()
    finally:
        if proc.poll() is None:  # pragma: no cover - only when an assertion fired first
            proc.kill()


# -- PostgreSQL: one connection holds every lock ------------------------------------------------


#: pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32 bits).
OURS = ("locktype = 'advisory' AND granted "
        "AND ((classid::bigint << 32) | objid::bigint) = ANY(%s)")


def our_keys(store: Any) -> list[int]:
    return [store.advisory.key(f"c_{i}") for i in range(400)]  # namespaced by the test schema


def advisory_locks(store: Any) -> tuple[int, int]:
    """(advisory locks held, distinct backends holding them) among this store's lock keys."""
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*), count(DISTINCT pid) FROM pg_locks WHERE {OURS}",
                           (our_keys(store),)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.fixture
def postgres_store() -> Iterator[Any]:
    b = Backend("postgres", Path("."))
    try:
        yield b.store
    finally:
        b.store.close()


def test_200_conversations_locked_at_once_hold_one_connection(postgres_store: Any) -> None:
    releases = [postgres_store.try_lock(f"c_{i}") for i in range(200)]
    assert all(releases)
    assert advisory_locks(postgres_store) == (200, 1)
    assert postgres_store.advisory.connects == 1
    # More turns in flight than the pool has connections (8), and writes still go through.
    postgres_store.create_conversation(id="c_0")
    assert postgres_store.load("c_0") == []
    # Released from many threads at once.
    threads = [threading.Thread(target=r) for r in releases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert advisory_locks(postgres_store) == (0, 0)


def test_the_lock_connection_reconnects_and_retakes_what_it_held(postgres_store: Any) -> None:
    import psycopg

    held = [postgres_store.try_lock(f"c_{i}") for i in range(3)]
    assert advisory_locks(postgres_store) == (3, 1)
    with psycopg.connect(postgres_store.url, autocommit=True) as admin:  # only this store's session
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE {OURS}",
                      (our_keys(postgres_store),))
    time.sleep(0.2)
    extra = postgres_store.try_lock("c_3")  # notices, reconnects, re-takes c_0..c_2
    assert extra is not None and postgres_store.advisory.connects == 2
    assert advisory_locks(postgres_store) == (4, 1)
    assert postgres_store.advisory.lost == set()
    for release in [*held, extra]:
        release()
    assert advisory_locks(postgres_store) == (0, 0)
