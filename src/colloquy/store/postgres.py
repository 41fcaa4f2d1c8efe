"""The PostgreSQL store: the same append-only log and the same behaviour as the SQLite store,
for many processes on many machines.

Why these choices:

* **psycopg 3 with a connection pool** (``psycopg_pool``): a turn makes a few short queries; a
  new connection per query would cost more than the queries. Connections are autocommit and
  every unit of work is an explicit transaction, as in the SQLite store.
* **Row lock on append**: ``SELECT last_seq ... FOR UPDATE`` serialises appends to one
  conversation, so sequence numbers stay dense and ``expected_seq`` conflicts are exact.
* **Advisory lock per turn** (:meth:`PostgresStore.lock`): a session-level lock on one pooled
  connection for the duration of a turn; the server releases it when the connection closes, so
  a client killed mid-turn never blocks the conversation.
* **Migrations** come from the one list in ``migrations.py`` (each has PostgreSQL SQL where the
  SQLite text is not portable), recorded in ``schema_migrations`` and applied under an advisory
  lock, so several processes starting at once apply each step exactly once.
* An optional **schema** (``PostgresStore(url, schema="tenant_a")``) isolates one store's tables;
  the test suite uses a fresh schema per test.

Install with ``pip install 'colloquy[postgres]'``.
"""

from __future__ import annotations

import json
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
        "the PostgreSQL store needs the postgres extra: pip install 'colloquy[postgres]'"
    ) from e

from ..errors import ConflictError, ConversationBusy, ConversationNotFound, StoreError
from ..messages import StoredMessage
from .base import Conversation, NewMessage, forget_cached, new_id
from .locks import DEFAULT_LOCK_TIMEOUT, lock_key
from .memory_records import SQLRecordMethods
from .migrations import MIGRATIONS, Migration
from .sqlite import _CONV_COLS, _MSG_COLS, _conversation, _message_row, _stored
from .users import SQLUserMethods

_CONV_VALUES = ", ".join(["%s"] * 9)
_MSG_VALUES = ", ".join(["%s"] * 12)
#: The expression the idempotency index is built on (migration 0200); queries must match it.
IDEMPOTENCY_EXPR = "((meta::jsonb) ->> 'idempotency_key')"


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


class PostgresStore(SQLUserMethods, SQLRecordMethods):
    """A store in a PostgreSQL database (``postgresql://user:password@host:port/dbname``).

    Thread-safe (the pool hands each unit of work its own connection). Do not share one across
    ``fork``: open it in the child.
    """

    dialect = "postgres"
    #: The shared SQL mixins (users, memory records) are written with ``?``; psycopg takes ``%s``.
    _user_param = "%s"
    _record_param = "%s"

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
    ) -> None:
        """``synchronous_commit=False`` stops waiting for the server's WAL flush at each commit:
        a server crash may forget the last moments of commits (never corrupt anything), the
        durability SQLite's WAL mode with ``synchronous=NORMAL`` gives. Turns get several
        milliseconds faster where fsync is slow (see the README, PostgreSQL)."""
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
        self.pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="colloquy",
            kwargs={"autocommit": True}, configure=self._configure,
        )
        # Turn locks are held for a whole turn (model call included) on connections of their
        # own, so many concurrent turns can never starve the pool the turns write through.
        self.lock_pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=0, max_size=max_size, open=False, name="colloquy-locks",
            kwargs={"autocommit": True},
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
            self.lock_pool.open()
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
    def transaction(self, write: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """One atomic unit of work on a pooled connection (``write`` is accepted for symmetry
        with the SQLite store; PostgreSQL needs no up-front write lock)."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except PoolTimeout as e:
            raise StoreError(f"no free PostgreSQL connection (pool of {self.pool.max_size}): {e}") from e
        except psycopg.OperationalError as e:
            raise StoreError(f"PostgreSQL failed: {e}") from e

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection, for single statements that need no transaction
        (reads): one round trip instead of three."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as e:
            raise StoreError(f"no free PostgreSQL connection (pool of {self.pool.max_size}): {e}") from e
        except psycopg.OperationalError as e:
            raise StoreError(f"PostgreSQL failed: {e}") from e

    def close(self) -> None:
        self.lock_pool.close()
        self.pool.close()

    # -- conversations -------------------------------------------------------------------------

    def create_conversation(
        self,
        *,
        id: str | None = None,
        user_id: str | None = None,
        persona: str = "",
        model: str = "",
        title: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Conversation:
        conv = Conversation(
            id=id or new_id(), user_id=user_id, persona=persona, model=model, title=title,
            meta=meta or {},
        )
        with self.transaction() as conn:
            cur = conn.execute(
                f"INSERT INTO conversations ({_CONV_COLS}) VALUES ({_CONV_VALUES}) "
                "ON CONFLICT (id) DO NOTHING",
                (conv.id, conv.user_id, conv.title, conv.persona, conv.model,
                 conv.created_at, conv.updated_at, 0, json.dumps(conv.meta)),
            )
            if cur.rowcount == 0:
                raise StoreError(f"conversation {conv.id!r} already exists")
        return conv

    def find_conversation(self, conversation_id: str) -> Conversation | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_CONV_COLS} FROM conversations WHERE id = %s", (conversation_id,)
            ).fetchone()
        return _conversation(row) if row else None

    def get_conversation(self, conversation_id: str) -> Conversation:
        conv = self.find_conversation(conversation_id)
        if conv is None:
            raise ConversationNotFound(conversation_id)
        return conv

    def list_conversations(self, user_id: str | None = None, limit: int = 100) -> list[Conversation]:
        with self._connection() as conn:
            if user_id is None:
                rows = conn.execute(
                    f"SELECT {_CONV_COLS} FROM conversations "
                    "ORDER BY updated_at DESC, created_at DESC LIMIT %s", (limit,)
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_CONV_COLS} FROM conversations WHERE user_id = %s "
                    "ORDER BY updated_at DESC, created_at DESC LIMIT %s", (user_id, limit)
                ).fetchall()
        return [_conversation(r) for r in rows]

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        persona: str | None = None,
        model: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Conversation:
        sets: list[str] = ["updated_at = %s"]
        args: list[Any] = [time.time()]
        for col, value in (("title", title), ("persona", persona), ("model", model)):
            if value is not None:
                sets.append(f"{col} = %s")
                args.append(value)
        if meta is not None:
            sets.append("meta = %s")
            args.append(json.dumps(meta))
        with self.transaction() as conn:
            row = conn.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE id = %s RETURNING {_CONV_COLS}",
                (*args, conversation_id),
            ).fetchone()
        if row is None:
            raise ConversationNotFound(conversation_id)
        return _conversation(row)

    def delete_conversation(self, conversation_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM messages WHERE conversation_id = %s", (conversation_id,))
            cur = conn.execute("DELETE FROM conversations WHERE id = %s", (conversation_id,))
            if cur.rowcount == 0:
                raise ConversationNotFound(conversation_id)
        forget_cached([conversation_id])

    # -- the log -------------------------------------------------------------------------------

    def append(
        self,
        conversation_id: str,
        messages: Sequence[NewMessage],
        *,
        expected_seq: int | None = None,
    ) -> list[StoredMessage]:
        now = time.time()
        n = len(messages)
        with self.transaction() as conn:
            # One statement locks the row, numbers the batch and stamps the activity; a conflict
            # raises inside the transaction, which rolls it back.
            row = conn.execute(
                "UPDATE conversations SET last_seq = last_seq + %s, updated_at = %s WHERE id = %s "
                "RETURNING last_seq", (n, now, conversation_id),
            ).fetchone()
            if row is None:
                raise ConversationNotFound(conversation_id)
            last = int(row[0]) - n
            if expected_seq is not None and expected_seq != last:
                raise ConflictError(conversation_id, expected_seq + 1)
            rows = [_message_row(conversation_id, last + i, m, now) for i, m in enumerate(messages, 1)]
            if rows:
                conn.execute(
                    f"INSERT INTO messages ({_MSG_COLS}) VALUES "
                    + ", ".join([f"({_MSG_VALUES})"] * len(rows)),
                    [value for r in rows for value in r],
                )
        return [_stored(r) for r in rows]

    def load(self, conversation_id: str, after_seq: int = 0, limit: int | None = None) -> list[StoredMessage]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (conversation_id, after_seq, limit),
            ).fetchall()
            if not rows and conn.execute(
                "SELECT 1 FROM conversations WHERE id = %s", (conversation_id,)
            ).fetchone() is None:
                raise ConversationNotFound(conversation_id)
        return [_stored(r) for r in rows]

    # -- turns: serialisation and idempotency --------------------------------------------------

    @contextmanager
    def lock(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the conversation's turn lock (a session advisory lock on a dedicated pooled
        connection) until the block ends; :class:`ConversationBusy` after ``timeout``."""
        key = lock_key(conversation_id, f"colloquy:{self.schema or ''}")
        try:
            conn = self.lock_pool.getconn(timeout=timeout)
        except PoolTimeout as e:
            raise ConversationBusy(conversation_id, timeout) from e
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (row and row[0]):  # busy: wait, at most ``timeout``
                conn.execute("SELECT set_config('lock_timeout', %s, false)",
                             (f"{max(1, int(timeout * 1000))}ms",))
                try:
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                finally:
                    conn.execute("SELECT set_config('lock_timeout', '0', false)")
        except psycopg.errors.LockNotAvailable as e:
            self.lock_pool.putconn(conn)
            raise ConversationBusy(conversation_id, timeout) from e
        except BaseException:
            conn.close()
            self.lock_pool.putconn(conn)
            raise
        try:
            yield
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except psycopg.Error:
                conn.close()  # never hand back a connection that may still hold the lock
            self.lock_pool.putconn(conn)

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None:
        """The message stored with this idempotency key in this conversation, if any."""
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = %s "
                f"AND {IDEMPOTENCY_EXPR} = %s",
                (conversation_id, key),
            ).fetchone()
        return _stored(row) if row else None
