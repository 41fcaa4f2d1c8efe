"""What a store offers the chat engine for safe turns: a per-conversation turn lock and the
lookup of an idempotency key (the :class:`TurnStore` protocol).

* ``try_lock(conversation_id)``: the conversation's turn lock if it is free, as a *release*
  callable (callable from any thread, more than once), else None; it never waits, so an
  asyncio service can take it on the event loop;
* ``lock(conversation_id, timeout)``: a context manager that waits for the lock (see
  ``locks.py`` for why a lock, and why these mechanisms per back end);
* ``claim_turn(conversation_id, fence)``: written by a turn that has just taken the lock: its
  fence (a fresh token) goes in the conversation's record, and the turn's appends pass it
  (``append(..., fence=)``) so they commit only while no later turn claimed the conversation
  (see ``locks.py``, Fencing); False when there is no record yet;
* ``claim_turn_read(conversation_id, fence, after_seq)`` (optional): ``claim_turn`` then
  ``read_log(conversation_id, after_seq)``, the read skipped when the claim's last_seq shows
  nothing new: None when there is no record (nothing claimed);
* ``find_by_idempotency_key(conversation_id, key)``: the message stored with that key, if any.
  Keys ride in the user message's ``meta["idempotency_key"]``; migration 0200 indexes them
  uniquely per conversation, so a retried request can never be stored twice.

Every store has the two lock methods through :class:`LockMethods`: a back end only says which
:class:`~colloquy.store.locks.TurnLocks` it uses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, runtime_checkable

from ..messages import StoredMessage
from .locks import DEFAULT_LOCK_TIMEOUT, Release, TurnLocks

IDEMPOTENCY_KEY = "idempotency_key"


@runtime_checkable
class TurnStore(Protocol):
    """The part of the Store protocol that :class:`colloquy.Chat` uses for safe turns."""

    def lock(
        self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> AbstractContextManager[None]:
        """Hold the conversation's turn lock for the ``with`` block, waiting at most
        ``timeout`` seconds for another turn (:class:`ConversationBusy` after that). The lock
        dies with its holder (a killed process never blocks a conversation)."""
        ...

    def try_lock(self, conversation_id: str) -> Release | None:
        """Take the conversation's turn lock without waiting: a release callable (call it once
        the turn is over, from any thread; later calls do nothing), or None when another turn
        (this process or another) holds it."""
        ...

    def claim_turn(self, conversation_id: str, fence: str) -> bool:
        """Write ``fence`` into the conversation's record (the turn holding the lock now owns
        it); False when the conversation has no record."""
        ...

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None: ...


class LockMethods:
    """``lock`` and ``try_lock`` over the store's :class:`TurnLocks` (``_turn_locks()``)."""

    def _turn_locks(self) -> TurnLocks:  # pragma: no cover - provided by the store
        raise NotImplementedError

    def try_lock(self, conversation_id: str) -> Release | None:
        return self._turn_locks().try_lock(conversation_id)

    @contextmanager
    def lock(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        with self._turn_locks().hold(conversation_id, timeout):
            yield


_create_guard = threading.Lock()


class MemoryTurnMethods(LockMethods):
    """For :class:`MemoryStore`: a threading lock per conversation and a scan of the log."""

    _messages: dict[str, list[StoredMessage]]

    def _turn_locks(self) -> TurnLocks:
        with _create_guard:  # two threads must not each create their own lock table
            locks: TurnLocks | None = getattr(self, "_locks_table", None)
            if locks is None:
                locks = self._locks_table = TurnLocks()
        return locks

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None:
        for sm in self._messages.get(conversation_id, []):
            if sm.meta.get(IDEMPOTENCY_KEY) == key:
                return sm
        return None
