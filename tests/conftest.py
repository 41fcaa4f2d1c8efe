"""Shared fixtures and small builders for the test suites.

``store`` runs a test once per store kind. Another suite can add a kind (e.g. PostgreSQL) by
appending its name to :data:`STORE_KINDS` and teaching :func:`make_store` to build it, so every
contract test in tests/test_store.py then runs against it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from colloquy.messages import Message, StoredMessage
from colloquy.store import MemoryStore, SQLiteStore, Store
from colloquy.tokens import TokenCounter
from pg_helpers import postgres_kinds, throwaway_postgres_store

#: Every store kind the contract suite runs against ("postgres" when COLLOQUY_TEST_POSTGRES_URL
#: is set, and always in CI, where a missing URL fails those tests: see tests/pg_helpers.py).
STORE_KINDS: list[str] = ["memory", "sqlite", *postgres_kinds()]


def make_store(kind: str, tmp_path: Path) -> Store:
    """A fresh, empty store of ``kind``; files go under ``tmp_path``."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "colloquy-test.db")
    if kind == "postgres":
        return throwaway_postgres_store()  # a fresh schema, dropped on close()
    raise ValueError(f"unknown store kind {kind!r}")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Path) -> Iterator[Store]:
    """One fresh store per store kind (the test runs once per kind)."""
    s = make_store(store_kind, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def counter() -> TokenCounter:
    """A private token counter, so calibration by one test never leaks into another."""
    return TokenCounter()


def stored(messages: Sequence[Message], conversation_id: str = "c_test") -> list[StoredMessage]:
    """Wrap messages as a stored log numbered 1..n (what a store's ``load`` returns)."""
    return [
        StoredMessage(conversation_id=conversation_id, seq=i, message=m)
        for i, m in enumerate(messages, start=1)
    ]
