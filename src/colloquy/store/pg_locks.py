"""PostgreSQL turn locks: every turn lock of a store on one dedicated connection.

Why one connection: a session-level advisory lock lives as long as the session that took it, so
holding it on a pooled connection per turn (the earlier design) tied up one connection per turn
in flight and capped a process at the pool's size (20 turns). Here one connection holds all of
a store's locks at once (``pg_try_advisory_lock`` / ``pg_advisory_unlock``), its use serialised
by a Python lock (each call is one short round trip); waiting for a busy conversation is done
by polling with a growing pause (see ``locks.TurnLocks``), so no call ever blocks the
connection. Thousands of turns in flight cost one connection.

Why it stays crash-safe: the server drops a session's advisory locks when its connection closes,
and the kernel closes the socket of a killed process, so a SIGKILLed holder frees its
conversations at once. TCP keepalives make a silently lost peer (a dead machine) close too.

When the connection dies (the server restarted, the network dropped it), the server has dropped
every lock it held. The next call reconnects and re-takes the locks this process still holds
(``pg_try_advisory_lock`` again); a lock another process took in between is reported *lost*
(:attr:`AdvisoryLocks.lost`, and a warning). Whether or not it is noticed here (another turn
may have taken the lock and freed it again before the reconnect), a turn that lost its lock
cannot commit as if it held it: its appends carry the turn's fence (``locks.py``, Fencing) and
raise :class:`~colloquy.errors.TurnLockLost` once another turn claimed the conversation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from ..errors import StoreUnavailable
from .locks import Release, lock_key

log = logging.getLogger(__name__)


class AdvisoryLocks:
    """Session advisory locks on one connection, made by ``connect`` (autocommit)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], namespace: str) -> None:
        self._connect = connect
        self._namespace = namespace
        self._guard = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        #: Keys this process holds (each at most once: the in-process TurnLocks come first).
        self._held: set[int] = set()
        #: Keys found taken by another process after a reconnect (see the module docstring).
        self.lost: set[int] = set()
        #: Times the lock connection was (re)opened.
        self.connects = 0

    def key(self, conversation_id: str) -> int:
        return lock_key(conversation_id, self._namespace)

    def _live(self) -> psycopg.Connection[Any]:
        """The lock connection, reconnected (and the held locks re-taken) if it died."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        conn = self._connect()
        self.connects += 1
        for key in sorted(self._held):
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (row and row[0]):
                self._held.discard(key)
                self.lost.add(key)
                log.warning("turn lock %d was taken by another process while the lock "
                            "connection was down", key)
        self._conn = conn
        return conn

    def _call(self, sql: str, key: int) -> bool:
        """Run one lock function; on a dead connection, reconnect and try once more."""
        for attempt in (1, 2):
            try:
                row = self._live().execute(sql, (key,)).fetchone()
                return bool(row and row[0])
            except psycopg.OperationalError as e:
                self._drop()
                if attempt == 2:
                    raise StoreUnavailable(f"PostgreSQL is unavailable (turn locks): {e}") from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:  # pragma: no cover - closing a dead connection
                pass
        self._conn = None

    def try_lock(self, conversation_id: str) -> Release | None:
        key = self.key(conversation_id)
        with self._guard:
            if not self._call("SELECT pg_try_advisory_lock(%s)", key):
                return None
            self._held.add(key)
            self.lost.discard(key)
        return lambda: self._unlock(key)

    def _unlock(self, key: int) -> None:
        with self._guard:
            if key not in self._held:
                return  # lost while the connection was down: nothing of ours to free
            self._held.discard(key)
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                return  # the server dropped it with the connection
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except psycopg.Error:
                # Never keep a session that may still hold the lock: closing frees it (and the
                # others, which are re-taken at once, or on the next call if the server is down).
                self._drop()
                try:
                    self._live()
                except psycopg.Error:
                    pass

    def held(self) -> int:
        with self._guard:
            return len(self._held)

    def close(self) -> None:
        with self._guard:
            self._drop()
            self._held.clear()
