"""What is specific to the PostgreSQL store (the shared behaviour is the contract suite in
tests/test_store.py, which runs on PostgreSQL through conftest's ``store`` fixture): choosing it
by URL, migrations under concurrent start, schemas, errors that never show the password, and the
CLI end to end."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

from colloquy import Chat, EchoModel
from colloquy.errors import StoreError
from colloquy.store import open_store
from colloquy.store.migrations import MIGRATIONS
from colloquy.store.postgres import PostgresStore, apply_pg_migrations, redact
from pg_helpers import drop_schema, new_schema, require_postgres_url


@pytest.fixture
def url() -> str:
    return require_postgres_url()


@pytest.fixture
def schema(url: str) -> Iterator[str]:
    name = new_schema()
    try:
        yield name
    finally:
        drop_schema(url, name)


def with_search_path(url: str, schema: str) -> str:
    """A plain libpq URL whose connections use ``schema`` (as a user would configure it)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


def recorded(url: str, schema: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f'SELECT name FROM "{schema}".schema_migrations ORDER BY name').fetchall()
    return [r[0] for r in rows]


def test_open_store_picks_postgres_from_the_url_and_from_colloquy_db(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    scoped = with_search_path(url, schema)
    store = open_store(scoped)
    assert isinstance(store, PostgresStore)
    assert repr(store) == f"PostgresStore({redact(scoped)!r}, schema=None)"
    Chat(EchoModel(), store=store, session_id="c_url").send("hi")
    store.close()
    again = open_store(environ={"COLLOQUY_DB": scoped})
    assert isinstance(again, PostgresStore) and len(again.load("c_url")) == 2
    again.close()
    assert sorted(recorded(url, schema)) == sorted(m.name for m in MIGRATIONS)


def test_migrations_apply_once_under_concurrent_start(url: str, schema: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresStore(url, schema=schema, max_size=2))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 6
    names = recorded(url, schema)
    assert len(names) == len(set(names)) == len(MIGRATIONS)
    for s in stores:
        s.close()


@pytest.mark.parametrize("k", range(len(MIGRATIONS)))
def test_migrating_from_every_older_schema(url: str, schema: str, k: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert apply_pg_migrations(conn, MIGRATIONS[:k], schema=schema) == [m.name for m in MIGRATIONS[:k]]
    store = PostgresStore(url, schema=schema)
    try:
        assert sorted(recorded(url, schema)) == sorted(m.name for m in MIGRATIONS)
        Chat(EchoModel(), store=store, session_id="c_m").send("works", idempotency_key="k")
        assert store.find_by_idempotency_key("c_m", "k") is not None
    finally:
        store.close()


def test_schemas_keep_stores_apart(url: str, schema: str) -> None:
    other = new_schema()
    a, b = PostgresStore(url, schema=schema), PostgresStore(url, schema=other)
    try:
        a.create_conversation(id="c_same")
        b.create_conversation(id="c_same")  # no clash: another schema
        a.append("c_same", [])
        with a.lock("c_same", timeout=5), b.lock("c_same", timeout=0.5):
            pass  # turn locks are per schema, too
        assert a.list_conversations() and b.list_conversations()
    finally:
        a.close()
        b.close()
        drop_schema(url, other)


def test_connection_errors_are_clear_and_never_show_the_password() -> None:
    bad = "postgresql://colloquy:s3cret-pass@127.0.0.1:1/nowhere"
    with pytest.raises(StoreError) as err:
        PostgresStore(bad, connect_timeout=2)
    assert "s3cret-pass" not in str(err.value) and "127.0.0.1" in str(err.value)
    assert redact(bad) == "postgresql://colloquy:***@127.0.0.1:1/nowhere"


def test_cli_chats_on_postgres_and_resumes_in_another_process(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    db = with_search_path(url, schema)

    def colloquy(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "colloquy", *args, "--db", db],
                              input=stdin, capture_output=True, text=True, timeout=60)

    first = colloquy("chat", "--model", "echo", "--session", "c_cli", "--user", "erin",
                     stdin="plan a trip to Porto\n")
    assert first.returncode == 0, first.stderr
    second = colloquy("chat", "--session", "c_cli", stdin="and book the hotel\n/history\n")
    assert second.returncode == 0, second.stderr
    assert "resuming session c_cli" in second.stderr
    assert "[1] user: plan a trip to Porto" in second.stdout and "[3] user: and book" in second.stdout
    store = PostgresStore(url, schema=schema)
    try:
        (conv,) = store.list_conversations(user_id="erin")
        assert conv.id == "c_cli" and conv.title == "plan a trip to Porto" and conv.last_seq == 4
    finally:
        store.close()


def test_more_concurrent_turns_than_pooled_connections(url: str, schema: str) -> None:
    """Turn locks hold their own connections, so lock holders never starve the writes."""
    from colloquy.messages import Message
    from colloquy.store import NewMessage

    store = PostgresStore(url, schema=schema, max_size=2)
    errors: list[BaseException] = []

    def turn(i: int) -> None:
        try:
            store.create_conversation(id=f"c_{i}")
            with store.lock(f"c_{i}", timeout=20):
                store.append(f"c_{i}", [NewMessage(message=Message.user("q"))])
                store.load(f"c_{i}")
                store.append(f"c_{i}", [NewMessage(message=Message.assistant("a"))])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    try:
        threads = [threading.Thread(target=turn, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and all(len(store.load(f"c_{i}")) == 2 for i in range(6))
    finally:
        store.close()
