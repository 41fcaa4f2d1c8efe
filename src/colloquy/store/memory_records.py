"""Store methods for derived memory records: summaries (per conversation), facts (per user) and
extraction cursors (per conversation).

The protocol is here with the in-memory implementation; the SQL stores implement it once for
both databases in ``sqlbase.py`` (statements in ``queries.py``, tables from migration
``0100_memory_records``).

Facts live per user, apart from the log: deleting a conversation keeps the facts learnt in it
(``forget_facts`` is how a user removes them). Summaries and cursors belong to their
conversation and go with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from ..errors import StoreError
from ..memory.records import Fact, Summary
from .owner import Owner


class FactNotFound(StoreError):
    """No fact has that id (for that user)."""

    def __init__(self, fact_id: str) -> None:
        self.fact_id = fact_id
        super().__init__(f"no fact with id {fact_id!r}")


@runtime_checkable
class MemoryRecordStore(Protocol):
    """The derived-record part of the Store protocol (see store/base.py)."""

    def save_summary(self, summary: Summary, *, owner: Owner | None = None) -> Summary:
        """Store a summary (idempotent on its id). Every write here takes ``owner``: on whose
        behalf it is made; a write whose owner is gone raises :class:`OwnerGone` and writes
        nothing (see store/owner.py)."""
        ...

    def latest_summary(self, conversation_id: str, up_to_seq: int | None = None) -> Summary | None:
        """The summary reaching furthest (largest end_seq, newest on ties) whose end_seq is at
        most ``up_to_seq`` (any, when None)."""
        ...

    def list_summaries(self, conversation_id: str) -> list[Summary]:
        """Every summary of the conversation, by end_seq then creation time."""
        ...

    def add_fact(self, fact: Fact, *, owner: Owner | None = None) -> Fact:
        """Store a fact, unless the user already has an active fact with the same statement
        (normalised): then return that one. Adding the same fact twice keeps one, however many
        writers add it at once (a unique index on active facts, migration 0610)."""
        ...

    def supersede_fact(self, old_id: str, new: Fact, *, owner: Owner | None = None) -> Fact:
        """Retire ``old_id`` (valid_until = new.valid_from, superseded_by = the replacement) and
        store ``new`` in one transaction, under a lock on ``old_id``. Returns the fact now in
        force (``old`` itself when the statement did not change, an existing duplicate when
        there is one). When ``old_id`` is already retired (another writer superseded it
        first), returns the active fact saying what ``new`` says if there is one, else raises
        :class:`StoreError`: two writers never leave two contradicting active facts."""
        ...

    def retire_fact(self, fact_id: str, *, at: float | None = None, owner: Owner | None = None) -> Fact:
        """Mark a fact no longer true (valid_until), keeping it for provenance."""
        ...

    def get_fact(self, fact_id: str) -> Fact | None: ...

    def list_facts(self, user_id: str, *, include_retired: bool = False) -> list[Fact]:
        """The user's facts, oldest first; only active ones unless ``include_retired``."""
        ...

    def forget_facts(self, user_id: str, fact_ids: Sequence[str] | None = None) -> int:
        """Delete facts for good (all of the user's when ``fact_ids`` is None); the count."""
        ...

    def get_memory_cursor(self, conversation_id: str, kind: str) -> int:
        """The last seq a memory job (e.g. "facts") has processed; 0 if none."""
        ...

    def set_memory_cursor(
        self, conversation_id: str, kind: str, seq: int, *, owner: Owner | None = None
    ) -> None: ...


def retired(fact: Fact, at: float, by: str | None) -> Fact:
    """``fact`` as it reads once retired at ``at`` (replaced by ``by``, if any)."""
    return fact.model_copy(update={"valid_until": at, "superseded_by": by})


def superseded_already(old: Fact, new: Fact, in_force: Fact | None) -> Fact:
    """What supersede_fact answers when ``old`` was retired by another writer first: the fact
    in force saying what ``new`` says, else a refusal (never a second active fact)."""
    if in_force is not None:
        return in_force
    raise StoreError(f"fact {old.id!r} is already retired (another writer replaced it first)")


# -- in memory -----------------------------------------------------------------------------------


class MemoryRecordMethods:
    """Dict-backed records for :class:`MemoryStore`, under the store's own lock (``_owned``
    holds it and checks the owner), so a check and its write are one atomic step."""

    def _owned(self, owner: Owner | None) -> AbstractContextManager[None]:  # pragma: no cover
        raise NotImplementedError

    def _records(self) -> dict[str, Any]:
        state = self.__dict__.get("_memory_records")
        if state is None:
            state = self.__dict__.setdefault(
                "_memory_records", {"summaries": {}, "facts": {}, "cursors": {}})
        return state  # type: ignore[no-any-return]

    def _forget_conversation_records(self, conversation_id: str) -> None:
        """Drop the conversation's summaries and cursors (facts stay with the user); called
        under the store's lock."""
        d = self._records()
        d["summaries"].pop(conversation_id, None)
        for key in [k for k in d["cursors"] if k[0] == conversation_id]:
            del d["cursors"][key]

    def save_summary(self, summary: Summary, *, owner: Owner | None = None) -> Summary:
        conversation = Owner(conversation_id=summary.conversation_id)
        with self._owned(conversation), self._owned(owner):  # a summary needs its conversation
            items = self._records()["summaries"].setdefault(summary.conversation_id, [])
            if not any(s.id == summary.id for s in items):
                items.append(summary)
        return summary

    def list_summaries(self, conversation_id: str) -> list[Summary]:
        with self._owned(None):
            items = list(self._records()["summaries"].get(conversation_id, []))
        return sorted(items, key=lambda s: (s.end_seq, s.created_at))

    def latest_summary(self, conversation_id: str, up_to_seq: int | None = None) -> Summary | None:
        items = [s for s in self.list_summaries(conversation_id)
                 if up_to_seq is None or s.end_seq <= up_to_seq]
        return items[-1] if items else None

    def _active_duplicate(self, fact: Fact, skip: str | None = None) -> Fact | None:
        return next((f for f in self._records()["facts"].values() if f.user_id == fact.user_id
                     and f.active and f.key == fact.key and f.id != skip), None)

    def add_fact(self, fact: Fact, *, owner: Owner | None = None) -> Fact:
        fact = fact.checked()
        with self._owned(owner):
            dup = self._active_duplicate(fact)
            if dup is not None:
                return dup
            self._records()["facts"][fact.id] = fact
            return fact

    def supersede_fact(self, old_id: str, new: Fact, *, owner: Owner | None = None) -> Fact:
        new = new.checked()
        with self._owned(owner):
            facts = self._records()["facts"]
            old = facts.get(old_id)
            if old is None or old.user_id != new.user_id:
                raise FactNotFound(old_id)
            if not old.active:
                return superseded_already(old, new, self._active_duplicate(new))
            if old.key == new.key:
                return old  # type: ignore[no-any-return]
            current = self._active_duplicate(new, skip=old_id) or new
            facts[current.id] = current
            facts[old_id] = retired(old, new.valid_from, current.id)
            return current

    def retire_fact(self, fact_id: str, *, at: float | None = None, owner: Owner | None = None) -> Fact:
        with self._owned(owner):
            facts = self._records()["facts"]
            old = facts.get(fact_id)
            if old is None:
                raise FactNotFound(fact_id)
            if not old.active:
                return old  # type: ignore[no-any-return]
            facts[fact_id] = retired(old, at if at is not None else time.time(), None)
            return facts[fact_id]  # type: ignore[no-any-return]

    def get_fact(self, fact_id: str) -> Fact | None:
        with self._owned(None):
            return self._records()["facts"].get(fact_id)  # type: ignore[no-any-return]

    def list_facts(self, user_id: str, *, include_retired: bool = False) -> list[Fact]:
        with self._owned(None):
            items = [f for f in self._records()["facts"].values()
                     if f.user_id == user_id and (include_retired or f.active)]
        return sorted(items, key=lambda f: (f.valid_from, f.created_at))

    def forget_facts(self, user_id: str, fact_ids: Sequence[str] | None = None) -> int:
        with self._owned(None):
            facts = self._records()["facts"]
            doomed = [k for k, f in facts.items() if f.user_id == user_id
                      and (fact_ids is None or k in fact_ids)]
            for k in doomed:
                del facts[k]
        return len(doomed)

    def get_memory_cursor(self, conversation_id: str, kind: str) -> int:
        with self._owned(None):
            return int(self._records()["cursors"].get((conversation_id, kind), 0))

    def set_memory_cursor(
        self, conversation_id: str, kind: str, seq: int, *, owner: Owner | None = None
    ) -> None:
        with self._owned(Owner(conversation_id=conversation_id)), self._owned(owner):
            self._records()["cursors"][(conversation_id, kind)] = seq
