"""One rate limit per user across every process and machine, kept in the database the service
uses (GCRA in one statement; the memory store keeps it in process): the store contract on every
store, atomicity under threads over two store objects, two real ``colloquy serve`` processes
over one SQLite file and over PostgreSQL, and no trace of a deleted user."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from colloquy import Store
from colloquy.rights import delete_user, discover_tables
from colloquy.server import RateLimit
from server_helpers import add_user, bearer, serve_subprocess
from test_server_multiprocess import db  # noqa: F401 - the two-back-end fixture

HOUR = 3600.0


def test_bursts_then_the_long_run_rate_with_the_wait_to_retry(store: Store) -> None:
    take = store.take_rate  # type: ignore[attr-defined]
    interval = 60.0 / 5  # 5 per minute
    assert [take("ann", interval, 5) for _ in range(5)] == [0.0] * 5
    wait = take("ann", interval, 5)
    assert interval - 1.0 < wait <= interval  # the next one frees up one interval after the burst
    assert take("ann", interval, 5) > 0  # a refused request does not extend the wait
    assert abs(take("ann", interval, 5) - wait) < 1.0
    assert take("bob", interval, 5) == 0.0  # per user
    # A short interval refills: after the wait, one more is allowed.
    assert take("cat", 0.05, 1) == 0.0
    w = take("cat", 0.05, 1)
    assert 0 < w <= 0.05
    threading.Event().wait(w + 0.01)
    assert take("cat", 0.05, 1) == 0.0


def test_the_limit_is_atomic_across_threads_and_store_objects(store_kind: str,
                                                              tmp_path: Path) -> None:
    from conftest import make_store

    first = make_store(store_kind, tmp_path)
    second = first if store_kind == "memory" else (
        type(first)(first.path) if store_kind == "sqlite"  # type: ignore[attr-defined]
        else _same_schema(first))
    try:
        stores = [first, second]

        def hit(i: int) -> bool:
            return stores[i % 2].take_rate("ann", HOUR, 10) == 0.0  # type: ignore[attr-defined]

        with cf.ThreadPoolExecutor(8) as pool:
            allowed = sum(pool.map(hit, range(60)))
        assert allowed == 10
    finally:
        if second is not first:
            second.close()
        first.close()


def _same_schema(store: Any) -> Any:
    from colloquy.store.postgres import PostgresStore

    return PostgresStore(store.url, schema=store.schema, max_size=4)


def test_a_deleted_user_leaves_no_rate_limit_row(store: Store) -> None:
    store.take_rate("ann", 60.0, 5)  # type: ignore[attr-defined]
    store.take_rate("bob", 60.0, 5)  # type: ignore[attr-defined]
    report = delete_user(store, "ann")
    assert report.rows["rate_limits"] == 1  # the memory store's state in process, a row in SQL
    if hasattr(store, "transaction"):
        assert "rate_limits" in discover_tables(store)
        with store.transaction(write=False) as conn:  # type: ignore[attr-defined]
            assert [r[0] for r in conn.execute("SELECT user_id FROM rate_limits")] == ["bob"]
    # A new user of that name starts with a full burst; the other user's state is kept.
    assert store.take_rate("ann", 60.0, 1) == 0.0  # type: ignore[attr-defined]
    assert store.take_rate("bob", 60.0, 1) > 0  # type: ignore[attr-defined]


def test_a_rate_limit_is_an_interval_per_request() -> None:
    assert RateLimit.parse("10/minute").interval == 6.0  # type: ignore[union-attr]
    assert RateLimit.parse("100/30s").interval == 0.3  # type: ignore[union-attr]
    with pytest.raises(Exception, match="positive"):
        RateLimit.parse("10/0s")


def test_two_servers_share_one_limit(db: str, tmp_path: Path) -> None:  # noqa: F811
    """The issue's case: 30 requests at 10/minute over 2 processes allow exactly 10 (sent at
    once, from 30 threads, so that no interval of 6 s passes meanwhile on a busy machine; a
    slower run may see one more per 6 s elapsed, which is the limit's long-run rate), and each
    refusal says when to come back."""
    token = add_user(db, "rl")
    with serve_subprocess(db, "--rate-limit", "10/minute", log=tmp_path / "a.log") as a, \
            serve_subprocess(db, "--rate-limit", "10/minute", log=tmp_path / "b.log") as b:
        start = threading.Barrier(30)

        def get(i: int) -> httpx.Response:
            start.wait()
            return httpx.get(f"{(a, b)[i % 2]}/v1/conversations", headers=bearer(token),
                             timeout=60)

        began = time.monotonic()
        with cf.ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(get, range(30)))
        elapsed = time.monotonic() - began
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 429}, codes
        assert 10 <= codes.count(200) <= 10 + int(elapsed / 6.0), (codes, elapsed)
        if elapsed < 6.0:
            assert codes.count(200) == 10
        for r in answers:
            if r.status_code == 429:
                assert 1 <= int(r.headers["retry-after"]) <= 7  # one request per 6 s
                assert r.json()["error"]["type"] == "rate_limited"
        carol = add_user(db, "carol")  # another user is not limited by rl's requests
        assert httpx.get(f"{b}/v1/me", headers=bearer(carol), timeout=30).status_code == 200
