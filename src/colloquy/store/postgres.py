"""The PostgreSQL store: the same append-only log and the same behaviour as the SQLite store,
for many processes on many machines.

Why these choices:

* **psycopg 3 with a connection pool** (``psycopg_pool``): a turn makes a few short queries; a
  new connection per query would cost more than the queries. Connections are autocommit and
  every unit of work is an explicit transaction, as in the SQLite store.
* **Row lock on append**: ``SELECT last_seq ... FOR UPDATE`` serialises appends to one
  conversation, so sequence numbers stay dense and ``expected_seq`` conflicts are exact.
* **Advisory lock per turn** (:meth:`PostgresStore.lock`, :meth:`PostgresStore.try_lock`): a
  session-level lock, all of a store's on one dedicated connection (``pg_locks.py``); the
  server releases them when the connection closes, so a client killed mid-turn never blocks
  the conversation, and thousands of turns in flight cost one connection.
* **One definition of each query**: the statements and the logic are shared with SQLite
  (``queries.py``, ``sqlbase.py``); this module supplies connections, migrations and locks.
* **Migrations** come from the one list in ``migrations.py`` (each has PostgreSQL SQL where the
  SQLite text is not portable), recorded in ``schema_migrations`` and applied under an advisory
  lock, so several processes starting at once apply each step exactly once.
* An optional **schema** (``PostgresStore(url, schema="tenant_a")``) isolates one store's tables;
  the test suite uses a fresh schema per test.

Install with ``pip install -e '.[postgres]'``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the PostgreSQL store needs the postgres extra: pip install -e '.[postgres]'"
    ) from e

from ..errors import StoreError, StoreUnavailable
from . import queries
from .locks import TurnLocks, lock_key
from .migrations import MIGRATIONS, Migration
from .pg_locks import AdvisoryLocks
from .sqlbase import SQLStore

#: Seconds the pool keeps retrying a lost connection in the background before a new request
#: may start a fresh attempt (see PostgresStore.__init__).
RECONNECT_TIMEOUT = 4.0
#: The expression the idempotency index is built on (migration 0200); queries must match it.
IDEMPOTENCY_EXPR = queries.POSTGRES.idempotency_expr


def redact(url: str) -> str:
    """The URL without its password, for messages and reprs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def apply_pg_migrations(
    conn: psycopg.Connection[Any],
    migrations: Sequence[Migration] = MIGRATIONS,
    schema: str | None = None,
) -> list[str]:
    """Apply the missing migrations in order, each in its own transaction; return their names.

    An advisory lock (per schema) makes concurrent starts safe: the second process waits, then
    finds every step recorded and applies nothing.
    """
    key = lock_key("migrations", f"colloquy:{schema or ''}")
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        if schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
        applied: list[str] = []
        for migration in migrations:
            if migration.name in done:
                continue
            with conn.transaction():
                # Simple-query protocol: a whole script (function bodies included) in one call.
                conn.execute(migration.sql("postgres").encode())
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)",
                    (migration.name, time.time()),
                )
            applied.append(migration.name)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


class PostgresStore(SQLStore):
    """A store in a PostgreSQL database (``postgresql://user:password@host:port/dbname``).

    Thread-safe (the pool hands each unit of work its own connection). Do not share one across
    ``fork``: open it in the child.
    """

    dialect = queries.POSTGRES

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        migrate: bool = True,
        min_size: int = 1,
        max_size: int = 20,
        connect_timeout: float = 10.0,
        synchronous_commit: bool = True,
        pool_timeout: float = 10.0,
    ) -> None:
        """``synchronous_commit=False`` stops waiting for the server's WAL flush at each commit:
        a server crash may forget the last moments of commits (never corrupt anything), the
        durability SQLite's WAL mode with ``synchronous=NORMAL`` gives. Turns get several
        milliseconds faster where fsync is slow (see the README, PostgreSQL).

        ``pool_timeout`` (seconds): how long a unit of work waits for a connection (all in use,
        or the server unreachable) before :class:`StoreUnavailable`, which the service answers
        with 503 and Retry-After."""
        self.url = url
        self.schema = schema
        self.synchronous_commit = synchronous_commit
        try:
            with psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            ) as conn:
                if migrate:
                    apply_pg_migrations(conn, schema=schema)
        except psycopg.Error as e:
            raise StoreError(f"cannot open PostgreSQL database {redact(url)}: {e}") from e
        # ``check``: every connection is tested as it leaves the pool (one empty query), so
        # after a server restart the dead ones are replaced instead of failing a turn.
        # ``reconnect_timeout``: the pool's background reconnection backs off exponentially
        # (1, 2, 4, 8... s) while the server is down; giving up after a few seconds lets the
        # next request start a fresh attempt at once, so service resumes as soon as the server
        # is back rather than after the backoff.
        self.pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="colloquy",
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            configure=self._configure, check=ConnectionPool.check_connection,
            timeout=pool_timeout, reconnect_timeout=RECONNECT_TIMEOUT,
        )
        self.connect_timeout = connect_timeout
        # Turn locks are held for a whole turn (model call included) on a connection of their
        # own, so concurrent turns never starve the pool the turns write through.
        self.advisory = AdvisoryLocks(self._lock_connection, f"colloquy:{schema or ''}")
        self._locks = TurnLocks(self.advisory.try_lock)
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as e:  # pragma: no cover - the direct connect above succeeded
            self.pool.close()
            raise StoreError(f"cannot open a connection pool to {redact(url)}: {e}") from e

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r}, schema={self.schema!r})"

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        if self.schema:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        if not self.synchronous_commit:
            conn.execute("SET synchronous_commit TO off")

    # -- connections and transactions ---------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, for single statements that need no transaction
        (reads): one round trip instead of three. A lost or unreachable server is
        :class:`StoreUnavailable` (nothing of the unit of work was committed: safe to retry)."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as e:
            raise StoreUnavailable(
                f"no PostgreSQL connection within {self.pool.timeout:g}s (pool of "
                f"{self.pool.max_size}; is the server up?): {e}") from e
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {e}") from e

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """One atomic unit of work on a pooled connection (``write`` is accepted for symmetry
        with the SQLite store; PostgreSQL needs no up-front write lock)."""
        with self._read() as conn, conn.transaction():
            yield conn

    def _write_one(self, sql: str, args: Sequence[Any]) -> Any:
        """A single statement is a transaction of its own in autocommit: one round trip."""
        return self._one(sql, args)

    def _lock_connection(self) -> psycopg.Connection[Any]:
        """The dedicated connection of the turn locks (keepalives: a dead peer is noticed)."""
        return psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
            application_name="colloquy-locks", keepalives=1, keepalives_idle=10,
            keepalives_interval=5, keepalives_count=3,
        )

    def _turn_locks(self) -> TurnLocks:
        return self._locks

    def close(self) -> None:
        self.advisory.close()
        self.pool.close()
