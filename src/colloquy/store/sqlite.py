"""The embedded default store: one SQLite file, WAL mode, append-only message log.

Why these settings: WAL lets readers run while a turn is being written and keeps each commit a
small append to the log file; ``synchronous=NORMAL`` in WAL mode never corrupts the database on a
crash (at worst a power loss forgets the newest commits); ``BEGIN IMMEDIATE`` takes the write lock
up front, so two processes appending to one conversation serialise instead of deadlocking, and
``busy_timeout`` makes the second one wait rather than fail. Within one process, writers also
queue on a lock of their own first: SQLite's busy handler polls by sleeping in growing steps, so
32 threads contending for the write lock saw a p99 of half a second, where a queue hands the lock
straight on (``bench/store.py``).

Deletion is for good: every connection runs with ``secure_delete`` (freed content is zeroed in
the page), and a deletion of a conversation or of facts ends with :func:`checkpoint_truncate`, so
the old page images in the ``-wal`` file are gone too (rights.py does the same, plus ``VACUUM``,
for a user). Cost: one checkpoint per deletion, none on the turn path.

The database file is created 0600 before SQLite opens it, so its ``-wal`` and ``-shm`` files
(which SQLite creates with the database file's mode) are owner-only too (``colloquy.files``).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreUnavailable
from ..files import ensure_private_file, private_dir
from . import queries
from .locks import TurnLocks, file_locks
from .migrations import MIGRATIONS, Migration, split_sql
from .sqlbase import SQLStore

#: RETURNING (used by the shared statements of queries.py) came with SQLite 3.35.
MIN_SQLITE = (3, 35, 0)

#: The connections' text_factory: UTF-8 with U+FFFD for bytes that are not UTF-8 (a partial of
#: ``bytes.decode``, so no Python frame per value).
_decode_text = functools.partial(bytes.decode, encoding="utf-8", errors="replace")

#: How long :func:`checkpoint_truncate` retries while readers pin the log (seconds).
CHECKPOINT_PATIENCE = 5.0


def checkpoint_truncate(conn: sqlite3.Connection, patience: float = CHECKPOINT_PATIENCE) -> bool:
    """Copy the write-ahead log into the database file and truncate it to zero bytes, so that
    no old page image (deleted rows' text) stays in ``<db>-wal``. Retries while another
    connection's read snapshot pins the log, up to ``patience`` seconds; False if it never
    completed (the caller reports it). Must run outside a transaction."""
    deadline = time.monotonic() + patience
    while True:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(path: Path) -> threading.RLock:
    """The process-wide writer queue of one database file (shared by every store on it)."""
    key = str(path.resolve())
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(key, threading.RLock())


class _UnavailableWhenLocked:
    """SQLite's "database is locked" (busy past the timeout) as :class:`StoreUnavailable`:
    nothing of the unit of work was stored, and retrying later is safe. A class, not a
    generator: it wraps every read and transaction (several a turn)."""

    __slots__ = ("store",)

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def __enter__(self) -> Any:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, sqlite3.OperationalError) and (
                "locked" in str(error) or "busy" in str(error)):
            store = self.store
            raise StoreUnavailable(
                f"the database {store.path} stayed locked by another process for more than "
                f"{store.busy_timeout:g}s: {error}",
                retry_after=max(1.0, store.busy_timeout / 2)) from error



class _Reading(_UnavailableWhenLocked):
    """``SQLiteStore._read()``: the thread's connection, errors as above."""

    __slots__ = ()

    def __enter__(self) -> sqlite3.Connection:
        return self.store._conn()


def apply_migrations(
    conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[str]:
    """Apply the missing migrations in order, each in its own transaction; return their names.

    Safe to call from several processes at once: the check runs under the write lock. A
    database that is up to date is only read, so a read-only file can still be read.
    """
    known = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if known:
        done_names = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
        if all(m.name in done_names for m in migrations):
            return []
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


class SQLiteStore(SQLStore):
    """A store in one SQLite file. Thread-safe: each thread gets its own connection."""

    dialect = queries.SQLITE
    in_process = True

    def __init__(self, path: str | Path, *, migrate: bool = True, create: bool = True,
                 busy_timeout: float = 30.0) -> None:
        """Open (with ``create``, create) the database file and bring its schema up to date.
        Raises StoreError, one line, when the file is missing (without ``create``), is not a
        SQLite database, or cannot be opened or migrated (permissions, a read-only directory).
        ``busy_timeout`` (seconds): how long a write waits for another process's write lock
        before :class:`StoreUnavailable` (the service answers 503 with Retry-After)."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:  # pragma: no cover - depends on the system
            raise StoreError(f"colloquy needs SQLite 3.35 or newer; this Python has "
                             f"{sqlite3.sqlite_version}")
        self.path = Path(path).expanduser()
        self.url = str(self.path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            if not create and not self.path.exists():
                raise StoreError(f"no database at {self.path} (nothing is stored there yet)")
            if str(self.path) != ":memory:":
                # Owner-only files: the -wal and -shm files take the database file's mode.
                private_dir(self.path.parent)
                ensure_private_file(self.path)
            self._writer = _writer_lock(self.path)
            if migrate:
                apply_migrations(self._conn())
        except OSError as e:
            raise StoreError(f"cannot open database {self.path}: {e.strerror or e}") from e
        except sqlite3.Error as e:
            self.close()
            raise StoreError(f"cannot open database {self.path}: {e}") from e

    # -- connections and transactions ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False,
                    timeout=self.busy_timeout,
                )
                # Text read back is decoded with errors="replace": a row written by another
                # tool with bytes that are not UTF-8 reads with U+FFFD (the text rules,
                # colloquy.text) instead of failing every read of it ("Could not decode to
                # UTF-8 column"). Cost: about 2 us more per text value read (100k values of
                # ~100 characters: min 1.5 -> 3.4 us, load average 10 on 2 CPUs); bench/store.py
                # turns/s within its run-to-run noise (load 11).
                conn.text_factory = _decode_text
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA secure_delete = ON")  # deleted text is zeroed in its page
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            except sqlite3.Error as e:  # e.g. "file is not a database"
                if conn is not None:
                    conn.close()
                raise StoreError(f"cannot open database {self.path}: {e}") from e
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; ``BEGIN IMMEDIATE`` for writers (see the module docstring).
        A database still locked after ``busy_timeout`` is :class:`StoreUnavailable`."""
        conn = self._conn()
        with self._writer if write else nullcontext(), _UnavailableWhenLocked(self):
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                else:
                    try:
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
            except sqlite3.OperationalError as e:
                if "readonly" in str(e):  # a read-only file or directory: one clear line
                    raise StoreError(f"cannot write to database {self.path}: {e}") from e
                raise

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    pass
            self._all.clear()
        self._local = threading.local()

    def _erase_deleted(self) -> None:
        checkpoint_truncate(self._conn())

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return _Reading(self)

    def _turn_locks(self) -> TurnLocks:
        return file_locks(self.path)
