"""What a store offers the chat engine for safe turns: a per-conversation turn lock and the
lookup of an idempotency key.

The methods live in small mixins so each back end gains them with a one-line change to its class
bases (PostgreSQL implements them natively in ``postgres.py``):

* ``lock(conversation_id, timeout)``: a context manager that holds the conversation's turn lock
  (see ``locks.py`` for why a lock, and why these mechanisms);
* ``find_by_idempotency_key(conversation_id, key)``: the message stored with that key, if any.
  Keys ride in the user message's ``meta["idempotency_key"]``; migration 0200 indexes them
  uniquely per conversation, so a retried request can never be stored twice.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..messages import StoredMessage
from .locks import DEFAULT_LOCK_TIMEOUT, FileLocks, ThreadLocks

IDEMPOTENCY_KEY = "idempotency_key"
_create_guard = threading.Lock()


@runtime_checkable
class TurnStore(Protocol):
    """The optional part of the Store protocol that :class:`colloquy.Chat` uses when present."""

    def lock(
        self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> Any:  # a context manager
        ...

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None: ...


class SQLiteTurnMethods:
    """For :class:`SQLiteStore`: kernel byte-range locks on ``<db>.locks`` and an indexed key
    lookup (the expression matches the index of migration 0200)."""

    path: Path

    def _conn(self) -> sqlite3.Connection:  # pragma: no cover - provided by the store
        raise NotImplementedError

    @contextmanager
    def lock(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        locks: FileLocks | None = getattr(self, "_file_locks", None)
        if locks is None:
            locks = self._file_locks = FileLocks(self.path)
        with locks.hold(conversation_id, timeout):
            yield

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None:
        from .sqlite import _MSG_COLS, _stored

        row = self._conn().execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? "
            "AND json_extract(meta, '$.idempotency_key') = ?",
            (conversation_id, key),
        ).fetchone()
        return _stored(row) if row else None


class MemoryTurnMethods:
    """For :class:`MemoryStore`: a threading lock per conversation and a scan of the log."""

    _messages: dict[str, list[StoredMessage]]

    @contextmanager
    def lock(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        with _create_guard:  # two threads must not each create their own lock table
            locks: ThreadLocks | None = getattr(self, "_turn_locks", None)
            if locks is None:
                locks = self._turn_locks = ThreadLocks()
        with locks.hold(conversation_id, timeout):
            yield

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None:
        for sm in self._messages.get(conversation_id, []):
            if sm.meta.get(IDEMPOTENCY_KEY) == key:
                return sm
        return None
