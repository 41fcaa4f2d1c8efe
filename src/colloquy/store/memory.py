"""An in-process store: the reference behaviour of the Store contract, for tests and one-off
scripts. Nothing survives the process."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import ConflictError, ConversationNotFound, TurnLockLost
from ..messages import StoredMessage
from .base import Conversation, LogRead, NewMessage, StoreBase
from .owner import Owner, check_owner
from .memory_records import MemoryRecordMethods
from .turns import MemoryTurnMethods
from .users import MemoryUserMethods


class MemoryStore(StoreBase, MemoryUserMethods, MemoryTurnMethods, MemoryRecordMethods):
    """Dicts behind one lock. Same semantics as the SQLite store, including conflicts."""

    url = "memory"
    in_process = True

    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[str, list[StoredMessage]] = {}
        self._lock = threading.RLock()
        #: user id -> GCRA theoretical arrival time (see :meth:`take_rate`).
        self._rates: dict[str, float] = {}
        #: conversation id -> the fence of the turn that last took its lock (store/locks.py).
        self._fences: dict[str, str] = {}

    def claim_turn(self, conversation_id: str, fence: str) -> bool:
        with self._lock:
            if conversation_id not in self._conversations:
                return False
            self._fences[conversation_id] = fence
            return True

    def claim_turn_read(self, conversation_id: str, fence: str, after_seq: int = 0) -> LogRead | None:
        with self._lock:
            return self.read_log(conversation_id, after_seq) if self.claim_turn(
                conversation_id, fence) else None

    def find_conversation(self, conversation_id: str) -> Conversation | None:
        with self._lock:
            return self._conversations.get(conversation_id)

    def existing_conversations(self, ids: Collection[str]) -> set[str]:
        with self._lock:
            return {cid for cid in ids if cid in self._conversations}

    def find_named(self, user_id: str, name: str) -> Conversation | None:
        with self._lock:
            return next((c for c in self._conversations.values()
                         if c.user_id == user_id and c.name == name), None)

    def list_named(self, name: str, limit: int = 100) -> list[Conversation]:
        with self._lock:
            convs = [c for c in self._conversations.values() if c.name == name]
        convs.sort(key=lambda c: (c.updated_at, c.created_at), reverse=True)
        return convs[:limit]

    @contextmanager
    def _owned(self, owner: Owner | None) -> Iterator[None]:
        """Hold the store's lock, with ``owner`` checked (see store/owner.py)."""
        with self._lock:
            if owner is not None:
                conv = self._conversations.get(owner.conversation_id or "")
                user = self._user_generation(owner.user_id) if owner.user_id else None
                check_owner(owner, conv.generation if conv else None, user, self)
            yield

    def _insert_conversation(self, conv: Conversation, owner: Owner | None) -> bool:
        with self._owned(owner):
            if conv.id in self._conversations or (
                    conv.user_id is not None and self.find_named(conv.user_id, conv.name)):
                return False
            self._conversations[conv.id] = conv
            self._messages[conv.id] = []
        return True

    def list_conversations(self, user_id: str | None = None, limit: int = 100) -> list[Conversation]:
        with self._lock:
            convs = [c for c in self._conversations.values() if user_id is None or c.user_id == user_id]
        convs.sort(key=lambda c: (c.updated_at, c.created_at), reverse=True)
        return convs[:limit]

    def _update_conversation(
        self, conversation_id: str, changes: dict[str, Any], now: float, owner: Owner | None,
        untitled_only: bool = False,
    ) -> Conversation | None:
        with self._owned(owner):
            conv = self._conversations.get(conversation_id)
            if conv is None or (untitled_only and conv.title is not None):
                return conv
            conv = conv.model_copy(update={**changes, "updated_at": now})
            self._conversations[conversation_id] = conv
            return conv

    def _delete_conversation(self, conversation_id: str) -> bool:
        with self._lock:
            if self._conversations.pop(conversation_id, None) is None:
                return False
            del self._messages[conversation_id]
            self._fences.pop(conversation_id, None)
            self._forget_conversation_records(conversation_id)
        return True

    def _append(
        self, conversation_id: str, messages: Sequence[NewMessage], expected_seq: int | None,
        now: float, owner: Owner | None, fence: str | None = None,
    ) -> list[StoredMessage]:
        with self._owned(owner):
            conv = self.get_conversation(conversation_id)
            if fence is not None and self._fences.get(conversation_id) != fence:
                raise TurnLockLost(conversation_id)
            if expected_seq is not None and expected_seq != conv.last_seq:
                raise ConflictError(conversation_id, expected_seq + 1)
            stored = [
                StoredMessage(
                    conversation_id=conversation_id, seq=conv.last_seq + i, message=m.message,
                    created_at=now, usage=m.usage, model=m.model, cost_usd=m.cost_usd,
                    meta=copy.deepcopy(m.meta),
                )
                for i, m in enumerate(messages, start=1)
            ]
            self._messages[conversation_id].extend(stored)
            self._conversations[conversation_id] = conv.model_copy(
                update={"last_seq": conv.last_seq + len(stored), "updated_at": now}
            )
            return stored

    def load(self, conversation_id: str, after_seq: int = 0, limit: int | None = None) -> list[StoredMessage]:
        read = self.read_log(conversation_id, after_seq, limit)
        if read is None:
            raise ConversationNotFound(conversation_id)
        return read.messages

    def read_log(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = None
    ) -> LogRead | None:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            if conv is None:
                return None
            log = self._messages[conversation_id]
            # seq n sits at index n - 1: the log is dense and append-only.
            out = log[max(0, after_seq):]  # a negative seq must not slice from the end
            return LogRead(generation=conv.generation, last_seq=conv.last_seq,
                           messages=out[:limit] if limit is not None else list(out))

    def take_rate(self, user_id: str, interval: float, burst: int) -> float:
        """The rate limit of :meth:`SQLStore.take_rate <colloquy.store.sqlbase.SQLStore.take_rate>`
        (GCRA), in this process's memory: 0.0 when allowed, else the seconds to wait."""
        now = time.time()
        with self._lock:
            rates = self._rates
            base = max(rates.get(user_id, now), now)
            if base + interval - now <= burst * interval:
                rates[user_id] = base + interval
                return 0.0
            return max(0.0, rates[user_id] - now - (burst - 1) * interval)

    def forget_rate(self, user_id: str) -> int:
        """Drop the user's rate-limit state (1 if there was some): ``delete_user`` calls it, as
        the SQL stores delete the user's ``rate_limits`` row, so a deleted user leaves no trace
        in the process and a new user of that name starts with a full burst."""
        with self._lock:
            return int(self._rates.pop(user_id, None) is not None)

    def close(self) -> None:
        pass
