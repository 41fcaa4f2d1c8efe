"""The logic of the SQL stores, written once for SQLite and PostgreSQL.

A back end (``sqlite.py``, ``postgres.py``) supplies only its connections: ``transaction()``
(one atomic unit of work), ``_read()`` (a connection for single reading statements), its
:class:`~colloquy.store.queries.Dialect` and its turn locks. Every statement comes from
``queries.py``; every behaviour (conflicts, not-found errors, fact de-duplication) is decided
here, so a fix is made once and holds for both databases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..errors import ConflictError, ConversationNotFound, StoreError, TurnLockLost
from ..memory.records import Fact, Summary
from ..messages import StoredMessage
from . import queries as Q
from .base import Conversation, LogRead, NewMessage, StoreBase
from .memory_records import FactNotFound, retired, superseded_already
from .owner import Owner, check_owner
from .turns import LockMethods
from .users import User

_NO_LIMIT = 2**62


class SQLStore(StoreBase, LockMethods):
    """A store over a SQL database (see the module docstring for what a back end supplies)."""

    dialect: Q.Dialect

    def transaction(self, write: bool = True) -> AbstractContextManager[Any]:  # pragma: no cover
        """One atomic unit of work, yielding a connection (``write=False``: reads only)."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:  # pragma: no cover
        """A connection for single reading statements (no transaction: one round trip)."""
        raise NotImplementedError

    def _one(self, sql: str, args: Sequence[Any]) -> Any:
        with self._read() as conn:
            return conn.execute(self.dialect.q(sql), args).fetchone()

    def _write_one(self, sql: str, args: Sequence[Any]) -> Any:
        """One writing statement that is atomic by itself, and its first returned row. A back
        end may run it more cheaply than a transaction (PostgreSQL: one autocommit round trip
        instead of three)."""
        with self.transaction() as conn:
            return conn.execute(self.dialect.q(sql), args).fetchone()

    def _rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._read() as conn:
            return list(conn.execute(self.dialect.q(sql), args).fetchall())

    # -- owners: writes on their behalf, and deletions (see owner.py) ---------------------------

    def _check_owner(self, conn: Any, owner: Owner | None, conversation: str | None = None) -> None:
        """Inside a write's transaction: lock the owner's rows (``FOR KEY SHARE``) and raise
        :class:`OwnerGone` if they are gone or of another generation. ``conversation``: the
        generation of the owner's conversation when the caller already read (and locked) it."""
        if owner is None:
            return
        d = self.dialect
        if owner.conversation_id is not None and conversation is None:
            row = conn.execute(d.q(Q.CONVERSATION_GENERATION + d.key_share),
                               (owner.conversation_id,)).fetchone()
            conversation = row[0] if row else None
        user = None
        if owner.user_id is not None and owner.user_generation is not None:
            row = conn.execute(d.q(Q.USER_GENERATION + d.key_share), (owner.user_id,)).fetchone()
            user = row[0] if row else None
        check_owner(owner, conversation, user, self)

    def _check_for(self, conn: Any, owner: Owner | None, conversation_id: str) -> None:
        """For a record of ``conversation_id``: that conversation must exist, and ``owner``
        (if any) too; one query when the owner is that conversation."""
        if owner is None or owner.conversation_id != conversation_id:
            self._check_owner(conn, Owner(conversation_id=conversation_id))
        self._check_owner(conn, owner)

    def lock_for_deletion(self, conn: Any, sql: str, arg: Any) -> None:
        """The first step of a deletion's transaction: lock the owner rows it will delete
        (``queries.LOCK_*``), so writes in flight on their behalf either commit before it (and
        are deleted with the rest) or find their owner gone."""
        conn.execute(self.dialect.q(sql + self.dialect.for_update), (arg,)).fetchall()

    # -- conversations -------------------------------------------------------------------------

    def _insert_conversation(self, conv: Conversation, owner: Owner | None) -> bool:
        with self.transaction() as conn:
            self._check_owner(conn, owner)
            cur = conn.execute(self.dialect.q(Q.INSERT_CONVERSATION), Q.conversation_row(conv))
            return bool(cur.rowcount)

    def find_conversation(self, conversation_id: str) -> Conversation | None:
        row = self._one(Q.SELECT_CONVERSATION, (conversation_id,))
        return Q.conversation(row) if row else None

    def existing_conversations(self, ids: Collection[str]) -> set[str]:
        wanted = list(ids)
        found: set[str] = set()
        step = self.dialect.max_params  # one statement for any cache size up to that
        for i in range(0, len(wanted), step):
            chunk = wanted[i:i + step]
            found.update(r[0] for r in self._rows(Q.existing_conversations_sql(len(chunk)), chunk))
        return found

    def find_named(self, user_id: str, name: str) -> Conversation | None:
        row = self._one(Q.SELECT_NAMED, (user_id, name))
        return Q.conversation(row) if row else None

    def list_named(self, name: str, limit: int = 100) -> list[Conversation]:
        return [Q.conversation(r) for r in self._rows(Q.LIST_NAMED, (name, limit))]

    def list_conversations(self, user_id: str | None = None, limit: int = 100) -> list[Conversation]:
        if user_id is None:
            rows = self._rows(Q.LIST_CONVERSATIONS, (limit,))
        else:
            rows = self._rows(Q.LIST_USER_CONVERSATIONS, (user_id, limit))
        return [Q.conversation(r) for r in rows]

    def _update_conversation(
        self, conversation_id: str, changes: dict[str, Any], now: float, owner: Owner | None,
        untitled_only: bool = False,
    ) -> Conversation | None:
        if "meta" in changes:
            changes = {**changes, "meta": json.dumps(changes["meta"])}
        with self.transaction() as conn:
            row = conn.execute(
                self.dialect.q(Q.update_conversation_sql(list(changes), untitled_only)),
                (now, *changes.values(), conversation_id),
            ).fetchone()
            if row is None and untitled_only:  # titled meanwhile (or gone): as it is
                row = conn.execute(self.dialect.q(Q.SELECT_CONVERSATION),
                                   (conversation_id,)).fetchone()
                return Q.conversation(row) if row else None
            conv = Q.conversation(row) if row else None
            # The UPDATE locked the row: a mismatch raises, and the rollback undoes it.
            own = conv.generation if conv is not None and owner is not None \
                and owner.conversation_id == conversation_id else None
            self._check_owner(conn, owner, own)
        return conv

    def _delete_conversation(self, conversation_id: str) -> bool:
        with self.transaction() as conn:
            self.lock_for_deletion(conn, Q.LOCK_CONVERSATION, conversation_id)
            conn.execute(self.dialect.q(Q.DELETE_MESSAGES), (conversation_id,))
            cur = conn.execute(self.dialect.q(Q.DELETE_CONVERSATION), (conversation_id,))
            return bool(cur.rowcount)

    # -- the log -------------------------------------------------------------------------------

    def _append(
        self, conversation_id: str, messages: Sequence[NewMessage], expected_seq: int | None,
        now: float, owner: Owner | None, fence: str | None = None,
    ) -> list[StoredMessage]:
        n = len(messages)
        q = self.dialect.q
        with self.transaction() as conn:
            # A conflict raises inside the transaction, which rolls the update back.
            row = conn.execute(q(Q.ADVANCE_LAST_SEQ), (n, now, conversation_id)).fetchone()
            mine = owner is not None and owner.conversation_id == conversation_id
            self._check_owner(conn, owner, row[1] if row and mine else None)  # OwnerGone
            if row is None:
                raise ConversationNotFound(conversation_id)
            if fence is not None and row[2] != fence:  # the row is locked: no claim in between
                raise TurnLockLost(conversation_id)
            last = int(row[0]) - n
            if expected_seq is not None and expected_seq != last:
                raise ConflictError(conversation_id, expected_seq + 1)
            rows = [Q.message_row(conversation_id, last + i, m, now) for i, m in enumerate(messages, 1)]
            step = max(1, self.dialect.max_params // Q.MSG_NCOLS)
            for i in range(0, len(rows), step):
                chunk = rows[i:i + step]
                conn.execute(q(Q.insert_messages_sql(len(chunk))), [v for r in chunk for v in r])
        return [Q.appended(r, m) for r, m in zip(rows, messages)]

    def claim_turn(self, conversation_id: str, fence: str) -> bool:
        return self._write_one(Q.claim_turn_sql(self.dialect), (fence, conversation_id)) is not None

    def claim_turn_read(self, conversation_id: str, fence: str, after_seq: int = 0) -> LogRead | None:
        """:meth:`claim_turn` then :meth:`read_log` from ``after_seq``; the claim returns the
        record's last_seq, so the read is made only when something was appended since (a turn
        of the only process writing the conversation reads nothing: one statement fewer)."""
        row = self._write_one(Q.claim_turn_sql(self.dialect), (fence, conversation_id))
        if row is None:
            return None
        if int(row[1]) <= after_seq:
            return LogRead(generation=row[0], last_seq=int(row[1]), messages=[])
        return self.read_log(conversation_id, after_seq)

    def load(self, conversation_id: str, after_seq: int = 0, limit: int | None = None) -> list[StoredMessage]:
        q = self.dialect.q
        with self._read() as conn:
            rows = conn.execute(
                q(Q.LOAD_MESSAGES), (conversation_id, after_seq, _NO_LIMIT if limit is None else limit)
            ).fetchall()
            if not rows and conn.execute(q(Q.CONVERSATION_EXISTS), (conversation_id,)).fetchone() is None:
                raise ConversationNotFound(conversation_id)
        return [Q.stored_message(r) for r in rows]

    def read_log(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = None
    ) -> LogRead | None:
        rows = self._rows(Q.READ_LOG, (after_seq, conversation_id,
                                       _NO_LIMIT if limit is None else limit))
        if not rows:
            return None
        return LogRead(generation=rows[0][0], last_seq=rows[0][1],
                       messages=[Q.stored_message(r[2:]) for r in rows if r[3] is not None])

    def find_by_idempotency_key(self, conversation_id: str, key: str) -> StoredMessage | None:
        """The message stored with this idempotency key in this conversation, if any."""
        row = self._one(Q.find_by_idempotency_key_sql(self.dialect), (conversation_id, key))
        return Q.stored_message(row) if row else None

    # -- users of the service ------------------------------------------------------------------

    def add_user(self, user_id: str, token_hash: str, *, replace: bool = False) -> User:
        now = time.time()
        q = self.dialect.q
        with self.transaction() as conn:
            row = conn.execute(q(Q.SELECT_USER), (user_id,)).fetchone()
            if row is not None and not replace:
                raise StoreError(f"user {user_id!r} already exists (rotate with --rotate)")
            if row is not None:
                conn.execute(q(Q.ROTATE_TOKEN), (token_hash, user_id))
                return Q.user(row)
            user = User(id=user_id, created_at=now)
            conn.execute(q(Q.INSERT_USER), (user.id, token_hash, user.created_at, user.generation))
        return user

    def user_for_token_hash(self, token_hash: str) -> User | None:
        row = self._one(Q.USER_FOR_TOKEN_HASH, (token_hash,))
        return Q.user(row) if row else None

    def list_users(self) -> list[User]:
        return [Q.user(r) for r in self._rows(Q.LIST_USERS, ())]

    def remove_user(self, user_id: str) -> bool:
        with self.transaction() as conn:
            return bool(conn.execute(self.dialect.q(Q.DELETE_USER), (user_id,)).rowcount)

    # -- memory records: summaries ---------------------------------------------------------------

    def save_summary(self, summary: Summary, *, owner: Owner | None = None) -> Summary:
        with self.transaction() as conn:
            self._check_for(conn, owner, summary.conversation_id)
            conn.execute(self.dialect.q(Q.INSERT_SUMMARY), Q.summary_row(summary))
        return summary

    def latest_summary(self, conversation_id: str, up_to_seq: int | None = None) -> Summary | None:
        row = self._one(Q.LATEST_SUMMARY,
                        (conversation_id, _NO_LIMIT if up_to_seq is None else up_to_seq))
        return Q.summary(row) if row else None

    def list_summaries(self, conversation_id: str) -> list[Summary]:
        return [Q.summary(r) for r in self._rows(Q.LIST_SUMMARIES, (conversation_id,))]

    # -- memory records: facts -------------------------------------------------------------------

    def _active_by_norm(self, conn: Any, user_id: str, norm: str, skip: str = "") -> Fact | None:
        row = conn.execute(self.dialect.q(Q.ACTIVE_FACT_BY_NORM), (user_id, norm, skip)).fetchone()
        return Q.fact(row) if row else None

    def _get_fact(self, conn: Any, fact_id: str, lock: bool = False) -> Fact | None:
        sql = Q.SELECT_FACT + (self.dialect.for_update if lock else "")
        row = conn.execute(self.dialect.q(sql), (fact_id,)).fetchone()
        return Q.fact(row) if row else None

    def _insert_fact(self, conn: Any, fact: Fact) -> Fact:
        """Insert unless an active fact says the same (the unique index decides, even against
        a concurrent writer); return the fact in force."""
        if conn.execute(self.dialect.q(Q.INSERT_FACT), Q.fact_row(fact)).rowcount:
            return fact
        kept = self._active_by_norm(conn, fact.user_id, fact.key)
        if kept is None:  # pragma: no cover - the conflicting row is committed and active
            raise StoreError(f"fact {fact.statement!r} conflicted with a fact that vanished")
        return kept

    def add_fact(self, fact: Fact, *, owner: Owner | None = None) -> Fact:
        fact = fact.checked()
        with self.transaction() as conn:
            self._check_owner(conn, owner)
            return self._insert_fact(conn, fact)

    def supersede_fact(self, old_id: str, new: Fact, *, owner: Owner | None = None) -> Fact:
        new = new.checked()
        with self.transaction() as conn:
            self._check_owner(conn, owner)
            # Locked: a second writer superseding the same fact waits here, then sees it retired.
            old = self._get_fact(conn, old_id, lock=True)
            if old is None or old.user_id != new.user_id:
                raise FactNotFound(old_id)
            if not old.active:
                return superseded_already(old, new, self._active_by_norm(conn, new.user_id, new.key))
            if old.key == new.key:
                return old
            current = self._insert_fact(conn, new)
            conn.execute(self.dialect.q(Q.RETIRE_FACT), (new.valid_from, current.id, old_id))
        return current

    def retire_fact(self, fact_id: str, *, at: float | None = None, owner: Owner | None = None) -> Fact:
        with self.transaction() as conn:
            self._check_owner(conn, owner)
            old = self._get_fact(conn, fact_id, lock=True)
            if old is None:
                raise FactNotFound(fact_id)
            if not old.active:
                return old
            when = at if at is not None else time.time()
            conn.execute(self.dialect.q(Q.RETIRE_FACT), (when, None, fact_id))
        return retired(old, when, None)

    def get_fact(self, fact_id: str) -> Fact | None:
        with self._read() as conn:
            return self._get_fact(conn, fact_id)

    def list_facts(self, user_id: str, *, include_retired: bool = False) -> list[Fact]:
        rows = self._rows(Q.LIST_FACTS if include_retired else Q.LIST_ACTIVE_FACTS, (user_id,))
        return [Q.fact(r) for r in rows]

    def forget_facts(self, user_id: str, fact_ids: Sequence[str] | None = None) -> int:
        q = self.dialect.q
        with self.transaction() as conn:
            if fact_ids is None:
                n = int(conn.execute(q(Q.DELETE_USER_FACTS), (user_id,)).rowcount)
            else:
                n = sum(int(conn.execute(q(Q.DELETE_FACT), (user_id, fid)).rowcount)
                        for fid in fact_ids)
        if n:
            self._erase_deleted()
        return n

    # -- memory records: cursors -----------------------------------------------------------------

    def get_memory_cursor(self, conversation_id: str, kind: str) -> int:
        row = self._one(Q.SELECT_CURSOR, (conversation_id, kind))
        return int(row[0]) if row else 0

    def set_memory_cursor(
        self, conversation_id: str, kind: str, seq: int, *, owner: Owner | None = None
    ) -> None:
        with self.transaction() as conn:
            self._check_for(conn, owner, conversation_id)
            conn.execute(self.dialect.q(Q.UPSERT_CURSOR), (conversation_id, kind, seq))

    # -- the service's rate limit ---------------------------------------------------------------

    def take_rate(self, user_id: str, interval: float, burst: int) -> float:
        """One request of ``user_id`` against a limit of one per ``interval`` seconds with
        bursts of ``burst``: 0.0 when allowed, else the seconds until one would be (GCRA, one
        statement on the database's clock; see colloquy.server.ratelimit)."""
        tat, allowed, now = self._write_one(Q.take_rate_sql(self.dialect),
                                            Q.take_rate_args(user_id, interval, burst))
        return 0.0 if allowed else max(0.0, float(tat) - float(now) - (burst - 1) * interval)
