"""Store methods for derived memory records: summaries (per conversation), facts (per user) and
extraction cursors (per conversation).

Why mixins: each back end gains these with a one-line change to its class bases, and PostgreSQL
reuses the SQL of :class:`SQLRecordMethods` through its own ``transaction()`` (psycopg takes
``%s`` placeholders: it sets ``_record_param``). The SQL is portable (``ON CONFLICT``, no
dialect functions); the tables come from migration ``0100_memory_records``.

Facts live per user, apart from the log: deleting a conversation keeps the facts learnt in it
(``forget_facts`` is how a user removes them). Summaries and cursors belong to their
conversation and go with it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from ..errors import StoreError
from ..memory.records import Fact, Summary


class FactNotFound(StoreError):
    """No fact has that id (for that user)."""

    def __init__(self, fact_id: str) -> None:
        self.fact_id = fact_id
        super().__init__(f"no fact with id {fact_id!r}")


@runtime_checkable
class MemoryRecordStore(Protocol):
    """The derived-record part of the Store protocol (see store/base.py)."""

    def save_summary(self, summary: Summary) -> Summary:
        """Store a summary (idempotent on its id)."""
        ...

    def latest_summary(self, conversation_id: str, up_to_seq: int | None = None) -> Summary | None:
        """The summary reaching furthest (largest end_seq, newest on ties) whose end_seq is at
        most ``up_to_seq`` (any, when None)."""
        ...

    def list_summaries(self, conversation_id: str) -> list[Summary]:
        """Every summary of the conversation, by end_seq then creation time."""
        ...

    def add_fact(self, fact: Fact) -> Fact:
        """Store a fact, unless the user already has an active fact with the same statement
        (normalised): then return that one. Adding the same fact twice keeps one."""
        ...

    def supersede_fact(self, old_id: str, new: Fact) -> Fact:
        """Retire ``old_id`` (valid_until = new.valid_from, superseded_by = the replacement) and
        store ``new`` in one transaction. Returns the fact now in force (``old`` itself when the
        statement did not change, an existing duplicate when there is one)."""
        ...

    def retire_fact(self, fact_id: str, *, at: float | None = None) -> Fact:
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

    def set_memory_cursor(self, conversation_id: str, kind: str, seq: int) -> None: ...


def _retired(fact: Fact, at: float, by: str | None) -> Fact:
    return fact.model_copy(update={"valid_until": at, "superseded_by": by})


# -- in memory -----------------------------------------------------------------------------------


class MemoryRecordMethods:
    """Dict-backed records for :class:`MemoryStore` (its own lock; created on first use)."""

    def _records(self) -> tuple[threading.RLock, dict[str, Any]]:
        state = self.__dict__.get("_memory_records")
        if state is None:
            state = self.__dict__.setdefault(
                "_memory_records",
                (threading.RLock(), {"summaries": {}, "facts": {}, "cursors": {}}),
            )
        return state  # type: ignore[no-any-return]

    def _forget_conversation_records(self, conversation_id: str) -> None:
        """Drop the conversation's summaries and cursors (facts stay with the user)."""
        lock, d = self._records()
        with lock:
            d["summaries"].pop(conversation_id, None)
            for key in [k for k in d["cursors"] if k[0] == conversation_id]:
                del d["cursors"][key]

    def save_summary(self, summary: Summary) -> Summary:
        self.get_conversation(summary.conversation_id)  # type: ignore[attr-defined]
        lock, d = self._records()
        with lock:
            items = d["summaries"].setdefault(summary.conversation_id, [])
            if not any(s.id == summary.id for s in items):
                items.append(summary)
        return summary

    def list_summaries(self, conversation_id: str) -> list[Summary]:
        lock, d = self._records()
        with lock:
            items = list(d["summaries"].get(conversation_id, []))
        return sorted(items, key=lambda s: (s.end_seq, s.created_at))

    def latest_summary(self, conversation_id: str, up_to_seq: int | None = None) -> Summary | None:
        items = [s for s in self.list_summaries(conversation_id)
                 if up_to_seq is None or s.end_seq <= up_to_seq]
        return items[-1] if items else None

    def _active_duplicate(self, d: dict[str, Any], fact: Fact, skip: str | None = None) -> Fact | None:
        return next((f for f in d["facts"].values() if f.user_id == fact.user_id and f.active
                     and f.key == fact.key and f.id != skip), None)

    def add_fact(self, fact: Fact) -> Fact:
        lock, d = self._records()
        with lock:
            dup = self._active_duplicate(d, fact)
            if dup is not None:
                return dup  # type: ignore[no-any-return]
            d["facts"][fact.id] = fact
            return fact

    def supersede_fact(self, old_id: str, new: Fact) -> Fact:
        lock, d = self._records()
        with lock:
            old = d["facts"].get(old_id)
            if old is None or old.user_id != new.user_id:
                raise FactNotFound(old_id)
            if not old.active:
                raise StoreError(f"fact {old_id!r} is already retired")
            if old.key == new.key:
                return old  # type: ignore[no-any-return]
            current = self._active_duplicate(d, new, skip=old_id) or new
            d["facts"][current.id] = current
            d["facts"][old_id] = _retired(old, new.valid_from, current.id)
            return current  # type: ignore[no-any-return]

    def retire_fact(self, fact_id: str, *, at: float | None = None) -> Fact:
        lock, d = self._records()
        with lock:
            old = d["facts"].get(fact_id)
            if old is None:
                raise FactNotFound(fact_id)
            if not old.active:
                return old  # type: ignore[no-any-return]
            d["facts"][fact_id] = _retired(old, at if at is not None else time.time(), None)
            return d["facts"][fact_id]  # type: ignore[no-any-return]

    def get_fact(self, fact_id: str) -> Fact | None:
        lock, d = self._records()
        with lock:
            return d["facts"].get(fact_id)  # type: ignore[no-any-return]

    def list_facts(self, user_id: str, *, include_retired: bool = False) -> list[Fact]:
        lock, d = self._records()
        with lock:
            items = [f for f in d["facts"].values()
                     if f.user_id == user_id and (include_retired or f.active)]
        return sorted(items, key=lambda f: (f.valid_from, f.created_at))

    def forget_facts(self, user_id: str, fact_ids: Sequence[str] | None = None) -> int:
        lock, d = self._records()
        with lock:
            doomed = [k for k, f in d["facts"].items() if f.user_id == user_id
                      and (fact_ids is None or k in fact_ids)]
            for k in doomed:
                del d["facts"][k]
        return len(doomed)

    def get_memory_cursor(self, conversation_id: str, kind: str) -> int:
        lock, d = self._records()
        with lock:
            return int(d["cursors"].get((conversation_id, kind), 0))

    def set_memory_cursor(self, conversation_id: str, kind: str, seq: int) -> None:
        lock, d = self._records()
        with lock:
            d["cursors"][(conversation_id, kind)] = seq


# -- SQL (SQLite, PostgreSQL) --------------------------------------------------------------------

_SUM_COLS = "id, conversation_id, start_seq, end_seq, text, model, previous_id, created_at, meta"
_FACT_COLS = ("id, user_id, subject, statement, norm, source_conversation, source_seq, valid_from, "
              "valid_until, superseded_by, origin, created_at, meta")


def _summary(row: Sequence[Any]) -> Summary:
    return Summary(id=row[0], conversation_id=row[1], start_seq=row[2], end_seq=row[3],
                   text=row[4], model=row[5] or "", previous_id=row[6], created_at=row[7],
                   meta=json.loads(row[8]))


def _fact(row: Sequence[Any]) -> Fact:
    return Fact(id=row[0], user_id=row[1], subject=row[2], statement=row[3],
                source_conversation=row[5], source_seq=row[6], valid_from=row[7],
                valid_until=row[8], superseded_by=row[9], origin=row[10], created_at=row[11],
                meta=json.loads(row[12]))


def _fact_row(f: Fact) -> tuple[Any, ...]:
    return (f.id, f.user_id, f.subject, f.statement, f.key, f.source_conversation, f.source_seq,
            f.valid_from, f.valid_until, f.superseded_by, f.origin, f.created_at,
            json.dumps(f.meta))


class SQLRecordMethods:
    """Record methods over SQL for stores with ``transaction()`` yielding a connection whose
    ``execute`` takes ``?`` placeholders; psycopg back ends set ``_record_param = "%s"``."""

    _record_param = "?"

    def transaction(self, write: bool = True) -> AbstractContextManager[Any]:  # pragma: no cover
        raise NotImplementedError

    def _rq(self, sql: str) -> str:
        return sql.replace("?", self._record_param)

    def save_summary(self, summary: Summary) -> Summary:
        s = summary
        with self.transaction() as conn:
            conn.execute(
                self._rq(f"INSERT INTO summaries ({_SUM_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (id) DO NOTHING"),
                (s.id, s.conversation_id, s.start_seq, s.end_seq, s.text, s.model, s.previous_id,
                 s.created_at, json.dumps(s.meta)),
            )
        return summary

    def latest_summary(self, conversation_id: str, up_to_seq: int | None = None) -> Summary | None:
        with self.transaction(write=False) as conn:
            row = conn.execute(
                self._rq(f"SELECT {_SUM_COLS} FROM summaries WHERE conversation_id = ? "
                         "AND end_seq <= ? ORDER BY end_seq DESC, created_at DESC LIMIT 1"),
                (conversation_id, up_to_seq if up_to_seq is not None else 2**62),
            ).fetchone()
        return _summary(row) if row else None

    def list_summaries(self, conversation_id: str) -> list[Summary]:
        with self.transaction(write=False) as conn:
            rows = conn.execute(
                self._rq(f"SELECT {_SUM_COLS} FROM summaries WHERE conversation_id = ? "
                         "ORDER BY end_seq, created_at"), (conversation_id,),
            ).fetchall()
        return [_summary(r) for r in rows]

    def _active_by_norm(self, conn: Any, user_id: str, norm: str, skip: str = "") -> Fact | None:
        row = conn.execute(
            self._rq(f"SELECT {_FACT_COLS} FROM facts WHERE user_id = ? AND norm = ? "
                     "AND valid_until IS NULL AND id <> ? ORDER BY created_at LIMIT 1"),
            (user_id, norm, skip),
        ).fetchone()
        return _fact(row) if row else None

    def _insert_fact(self, conn: Any, fact: Fact) -> None:
        conn.execute(
            self._rq(f"INSERT INTO facts ({_FACT_COLS}) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            _fact_row(fact),
        )

    def add_fact(self, fact: Fact) -> Fact:
        with self.transaction() as conn:
            dup = self._active_by_norm(conn, fact.user_id, fact.key)
            if dup is not None:
                return dup
            self._insert_fact(conn, fact)
        return fact

    def _get_fact(self, conn: Any, fact_id: str) -> Fact | None:
        row = conn.execute(
            self._rq(f"SELECT {_FACT_COLS} FROM facts WHERE id = ?"), (fact_id,)
        ).fetchone()
        return _fact(row) if row else None

    def supersede_fact(self, old_id: str, new: Fact) -> Fact:
        with self.transaction() as conn:
            old = self._get_fact(conn, old_id)
            if old is None or old.user_id != new.user_id:
                raise FactNotFound(old_id)
            if not old.active:
                raise StoreError(f"fact {old_id!r} is already retired")
            if old.key == new.key:
                return old
            current = self._active_by_norm(conn, new.user_id, new.key, skip=old_id)
            if current is None:
                self._insert_fact(conn, new)
                current = new
            conn.execute(
                self._rq("UPDATE facts SET valid_until = ?, superseded_by = ? WHERE id = ?"),
                (new.valid_from, current.id, old_id),
            )
        return current

    def retire_fact(self, fact_id: str, *, at: float | None = None) -> Fact:
        with self.transaction() as conn:
            old = self._get_fact(conn, fact_id)
            if old is None:
                raise FactNotFound(fact_id)
            if not old.active:
                return old
            when = at if at is not None else time.time()
            conn.execute(self._rq("UPDATE facts SET valid_until = ? WHERE id = ?"), (when, fact_id))
        return _retired(old, when, None)

    def get_fact(self, fact_id: str) -> Fact | None:
        with self.transaction(write=False) as conn:
            return self._get_fact(conn, fact_id)

    def list_facts(self, user_id: str, *, include_retired: bool = False) -> list[Fact]:
        where = "" if include_retired else " AND valid_until IS NULL"
        with self.transaction(write=False) as conn:
            rows = conn.execute(
                self._rq(f"SELECT {_FACT_COLS} FROM facts WHERE user_id = ?{where} "
                         "ORDER BY valid_from, created_at"), (user_id,),
            ).fetchall()
        return [_fact(r) for r in rows]

    def forget_facts(self, user_id: str, fact_ids: Sequence[str] | None = None) -> int:
        with self.transaction() as conn:
            if fact_ids is None:
                cur = conn.execute(self._rq("DELETE FROM facts WHERE user_id = ?"), (user_id,))
                return int(cur.rowcount)
            n = 0
            for fid in fact_ids:
                cur = conn.execute(
                    self._rq("DELETE FROM facts WHERE user_id = ? AND id = ?"), (user_id, fid)
                )
                n += int(cur.rowcount)
            return n

    def get_memory_cursor(self, conversation_id: str, kind: str) -> int:
        with self.transaction(write=False) as conn:
            row = conn.execute(
                self._rq("SELECT seq FROM memory_cursors WHERE conversation_id = ? AND kind = ?"),
                (conversation_id, kind),
            ).fetchone()
        return int(row[0]) if row else 0

    def set_memory_cursor(self, conversation_id: str, kind: str, seq: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                self._rq("INSERT INTO memory_cursors (conversation_id, kind, seq) VALUES (?, ?, ?) "
                         "ON CONFLICT (conversation_id, kind) DO UPDATE SET seq = excluded.seq"),
                (conversation_id, kind, seq),
            )

