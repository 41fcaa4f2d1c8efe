"""The embedded default store: one SQLite file, WAL mode, append-only message log.

Why these settings: WAL lets readers run while a turn is being written and keeps each commit a
small append to the log file; ``synchronous=NORMAL`` in WAL mode never corrupts the database on a
crash (at worst a power loss forgets the newest commits); ``BEGIN IMMEDIATE`` takes the write lock
up front, so two processes appending to one conversation serialise instead of deadlocking, and
``busy_timeout`` makes the second one wait rather than fail. Within one process, writers also
queue on a lock of their own first: SQLite's busy handler polls by sleeping in growing steps, so
32 threads contending for the write lock saw a p99 of half a second, where a queue hands the lock
straight on (``bench/store.py``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..errors import ConflictError, ConversationNotFound, StoreError
from ..messages import Message, StoredMessage
from ..usage import Usage
from .base import Conversation, NewMessage, forget_cached, new_id
from .memory_records import SQLRecordMethods
from .turns import SQLiteTurnMethods
from .users import SQLUserMethods
from .migrations import MIGRATIONS, Migration, split_sql

_CONV_COLS = "id, user_id, title, persona, model, created_at, updated_at, last_seq, meta"
_MSG_COLS = (
    "conversation_id, seq, role, content, created_at, model, input_tokens, output_tokens, "
    "cache_write_tokens, cache_read_tokens, cost_usd, meta"
)

_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(path: Path) -> threading.RLock:
    """The process-wide writer queue of one database file (shared by every store on it)."""
    key = str(path.resolve())
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(key, threading.RLock())


def _conversation(row: sqlite3.Row | tuple[Any, ...]) -> Conversation:
    return Conversation(
        id=row[0], user_id=row[1], title=row[2], persona=row[3], model=row[4],
        created_at=row[5], updated_at=row[6], last_seq=row[7], meta=json.loads(row[8]),
    )


def _stored(row: tuple[Any, ...]) -> StoredMessage:
    usage = None
    if row[6] is not None or row[7] is not None:
        usage = Usage(
            input_tokens=row[6] or 0, output_tokens=row[7] or 0,
            cache_write_tokens=row[8] or 0, cache_read_tokens=row[9] or 0,
        )
    return StoredMessage(
        conversation_id=row[0], seq=row[1],
        message=Message(role=row[2], content=json.loads(row[3])),
        created_at=row[4], model=row[5], usage=usage, cost_usd=row[10], meta=json.loads(row[11]),
    )


def _message_row(conversation_id: str, seq: int, m: NewMessage, now: float) -> tuple[Any, ...]:
    u = m.usage
    return (
        conversation_id, seq, m.message.role,
        json.dumps([b.model_dump(mode="json", exclude_none=True) for b in m.message.content]),
        now, m.model,
        u.input_tokens if u else None, u.output_tokens if u else None,
        u.cache_write_tokens if u else None, u.cache_read_tokens if u else None,
        m.cost_usd, json.dumps(m.meta),
    )


def apply_migrations(
    conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[str]:
    """Apply the missing migrations in order, each in its own transaction; return their names.

    Safe to call from several processes at once: the check runs under the write lock.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    applied: list[str] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE name = ?", (migration.name,)
            ).fetchone()
            if not done:
                for statement in split_sql(migration.sql("sqlite")):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, time.time()),
                )
                applied.append(migration.name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied


class SQLiteStore(SQLUserMethods, SQLiteTurnMethods, SQLRecordMethods):
    """A store in one SQLite file. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: str | Path, *, migrate: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.url = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._writer = _writer_lock(self.path)
        if migrate:
            apply_migrations(self._conn())

    # -- connections and transactions ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
            except sqlite3.Error as e:  # pragma: no cover - depends on the filesystem
                raise StoreError(f"cannot open database {self.path}: {e}") from e
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; ``BEGIN IMMEDIATE`` for writers (see the module docstring)."""
        conn = self._conn()
        with self._writer if write else nullcontext():
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    pass
            self._all.clear()
        self._local = threading.local()

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
        try:
            with self.transaction() as conn:
                conn.execute(
                    f"INSERT INTO conversations ({_CONV_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (conv.id, conv.user_id, conv.title, conv.persona, conv.model,
                     conv.created_at, conv.updated_at, 0, json.dumps(conv.meta)),
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"conversation {conv.id!r} already exists") from e
        return conv

    def find_conversation(self, conversation_id: str) -> Conversation | None:
        row = self._conn().execute(
            f"SELECT {_CONV_COLS} FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return _conversation(row) if row else None

    def get_conversation(self, conversation_id: str) -> Conversation:
        conv = self.find_conversation(conversation_id)
        if conv is None:
            raise ConversationNotFound(conversation_id)
        return conv

    def list_conversations(self, user_id: str | None = None, limit: int = 100) -> list[Conversation]:
        if user_id is None:
            rows = self._conn().execute(
                f"SELECT {_CONV_COLS} FROM conversations "
                "ORDER BY updated_at DESC, created_at DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._conn().execute(
                f"SELECT {_CONV_COLS} FROM conversations WHERE user_id = ? "
                "ORDER BY updated_at DESC, created_at DESC LIMIT ?", (user_id, limit)
            )
        return [_conversation(r) for r in rows.fetchall()]

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        persona: str | None = None,
        model: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Conversation:
        sets: list[str] = ["updated_at = ?"]
        args: list[Any] = [time.time()]
        for col, value in (("title", title), ("persona", persona), ("model", model)):
            if value is not None:
                sets.append(f"{col} = ?")
                args.append(value)
        if meta is not None:
            sets.append("meta = ?")
            args.append(json.dumps(meta))
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE id = ?", (*args, conversation_id)
            )
            if cur.rowcount == 0:
                raise ConversationNotFound(conversation_id)
        return self.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            cur = conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
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
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT last_seq FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                raise ConversationNotFound(conversation_id)
            last = row[0]
            if expected_seq is not None and expected_seq != last:
                raise ConflictError(conversation_id, expected_seq + 1)
            rows = [_message_row(conversation_id, last + i, m, now) for i, m in enumerate(messages, 1)]
            conn.executemany(
                f"INSERT INTO messages ({_MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute(
                "UPDATE conversations SET last_seq = ?, updated_at = ? WHERE id = ?",
                (last + len(rows), now, conversation_id),
            )
        return [_stored(r) for r in rows]

    def load(self, conversation_id: str, after_seq: int = 0, limit: int | None = None) -> list[StoredMessage]:
        conn = self._conn()
        rows = conn.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (conversation_id, after_seq, -1 if limit is None else limit),
        ).fetchall()
        if not rows and self.find_conversation(conversation_id) is None:
            raise ConversationNotFound(conversation_id)
        return [_stored(r) for r in rows]
