"""An in-process store: the reference behaviour of the Store contract, for tests and one-off
scripts. Nothing survives the process."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..errors import ConflictError, ConversationNotFound, StoreError
from ..messages import StoredMessage
from .base import Conversation, NewMessage, forget_cached, new_id
from .memory_records import MemoryRecordMethods
from .turns import MemoryTurnMethods
from .users import MemoryUserMethods


class MemoryStore(MemoryUserMethods, MemoryTurnMethods, MemoryRecordMethods):
    """Dicts behind one lock. Same semantics as the SQLite store, including conflicts."""

    url = "memory"

    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[str, list[StoredMessage]] = {}
        self._lock = threading.RLock()

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
            meta=copy.deepcopy(meta) if meta else {},  # the caller may reuse its dict
        )
        with self._lock:
            if conv.id in self._conversations:
                raise StoreError(f"conversation {conv.id!r} already exists")
            self._conversations[conv.id] = conv
            self._messages[conv.id] = []
        return conv

    def find_conversation(self, conversation_id: str) -> Conversation | None:
        with self._lock:
            return self._conversations.get(conversation_id)

    def get_conversation(self, conversation_id: str) -> Conversation:
        conv = self.find_conversation(conversation_id)
        if conv is None:
            raise ConversationNotFound(conversation_id)
        return conv

    def list_conversations(self, user_id: str | None = None, limit: int = 100) -> list[Conversation]:
        with self._lock:
            convs = [c for c in self._conversations.values() if user_id is None or c.user_id == user_id]
        convs.sort(key=lambda c: (c.updated_at, c.created_at), reverse=True)
        return convs[:limit]

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        persona: str | None = None,
        model: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Conversation:
        with self._lock:
            conv = self.get_conversation(conversation_id)
            changes: dict[str, Any] = {"updated_at": time.time()}
            for key, value in (("title", title), ("persona", persona), ("model", model),
                               ("meta", copy.deepcopy(meta))):
                if value is not None:
                    changes[key] = value
            conv = conv.model_copy(update=changes)
            self._conversations[conversation_id] = conv
            return conv

    def delete_conversation(self, conversation_id: str) -> None:
        with self._lock:
            self.get_conversation(conversation_id)
            del self._conversations[conversation_id]
            del self._messages[conversation_id]
            self._forget_conversation_records(conversation_id)
        forget_cached([conversation_id])

    def append(
        self,
        conversation_id: str,
        messages: Sequence[NewMessage],
        *,
        expected_seq: int | None = None,
    ) -> list[StoredMessage]:
        with self._lock:
            conv = self.get_conversation(conversation_id)
            if expected_seq is not None and expected_seq != conv.last_seq:
                raise ConflictError(conversation_id, expected_seq + 1)
            now = time.time()
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
        with self._lock:
            self.get_conversation(conversation_id)
            log = self._messages[conversation_id]
            # seq n sits at index n - 1: the log is dense and append-only.
            out = log[max(0, after_seq):]  # a negative seq must not slice from the end
            return out[:limit] if limit is not None else list(out)

    def close(self) -> None:
        pass
