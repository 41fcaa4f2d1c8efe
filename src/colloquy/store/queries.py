"""Every SQL statement of the SQL stores, written once, and the row mappers that read them.

Why one module: SQLite and PostgreSQL run the same statements; only the placeholder style and a
few expressions differ. A statement here is written with ``?`` placeholders (as SQLite takes
them) and :meth:`Dialect.q` turns it into the driver's style (``%s`` for psycopg), so a fix to a
query is made once for both back ends. What does differ is a named attribute of
:class:`Dialect` (the JSON expression of the idempotency index, the row lock clause), never a
second copy of a statement.

Needs SQLite 3.35 or newer (``RETURNING``, March 2021); PostgreSQL 12 or newer.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..memory.records import Fact, Summary
from ..messages import STORED, USAGE_ESTIMATED, Message, StoredMessage
from ..usage import Usage
from .base import Conversation, NewMessage
from .users import User


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL back ends; everything else is shared text."""

    name: str
    #: The driver's placeholder: ``?`` (sqlite3) or ``%s`` (psycopg).
    param: str
    #: The JSON expression the idempotency index is built on (migration 0200): queries must
    #: use exactly this expression for the index to serve them.
    idempotency_expr: str
    #: Appended to a SELECT that must lock the rows it reads until the transaction ends
    #: (PostgreSQL's READ COMMITTED needs it; SQLite's write transactions are serial already):
    #: ``for_update`` by a deletion or a fact being superseded, ``key_share`` by a write on
    #: behalf of an owner (it blocks the owner's deletion, not other writes; see owner.py).
    for_update: str
    key_share: str
    #: The larger of two numbers (SQLite's two-argument max(), PostgreSQL's GREATEST).
    greatest: str = "max"
    #: The database's clock, in seconds since the epoch: one clock for every process and
    #: machine that shares the database (used by the rate limit).
    now: str = "((julianday('now') - 2440587.5) * 86400.0)"
    #: Most variables one statement may carry (SQLite: 32,766 since 3.32).
    max_params: int = 32_766

    def q(self, sql: str) -> str:
        """``sql`` with the driver's placeholders (statements here never quote a ``?``)."""
        return sql if self.param == "?" else sql.replace("?", self.param)


SQLITE = Dialect(
    name="sqlite", param="?", for_update="", key_share="",
    idempotency_expr="json_extract(meta, '$.idempotency_key')",
)
POSTGRES = Dialect(
    name="postgres", param="%s", for_update=" FOR UPDATE", key_share=" FOR KEY SHARE",
    idempotency_expr="((meta::jsonb) ->> 'idempotency_key')",
    greatest="GREATEST", now="extract(epoch from statement_timestamp())::float8",
)


def values(rows: int, cols: int) -> str:
    """``(?, ?), (?, ?)`` for a multi-row INSERT: one statement, one round trip."""
    one = "(" + ", ".join(["?"] * cols) + ")"
    return ", ".join([one] * rows)


# -- conversations ---------------------------------------------------------------------------------

CONV_COLS = (
    "id, user_id, title, persona, model, created_at, updated_at, last_seq, meta, name, generation"
)
#: Refused (no row) when the id is taken, or the name among the user's conversations (the
#: unique index of migration 0500).
INSERT_CONVERSATION = (
    f"INSERT INTO conversations ({CONV_COLS}) VALUES ({', '.join(['?'] * 11)}) "
    "ON CONFLICT DO NOTHING"
)
SELECT_CONVERSATION = f"SELECT {CONV_COLS} FROM conversations WHERE id = ?"
SELECT_NAMED = f"SELECT {CONV_COLS} FROM conversations WHERE user_id = ? AND name = ?"
_ACTIVITY_ORDER = "ORDER BY updated_at DESC, created_at DESC LIMIT ?"
LIST_NAMED = f"SELECT {CONV_COLS} FROM conversations WHERE name = ? {_ACTIVITY_ORDER}"
LIST_CONVERSATIONS = f"SELECT {CONV_COLS} FROM conversations {_ACTIVITY_ORDER}"
LIST_USER_CONVERSATIONS = f"SELECT {CONV_COLS} FROM conversations WHERE user_id = ? {_ACTIVITY_ORDER}"
#: The columns update_conversation may set (besides updated_at); the SET list is built from
#: these names only.
UPDATABLE = ("title", "persona", "model", "meta")


def update_conversation_sql(columns: Sequence[str], untitled_only: bool = False) -> str:
    """``UPDATE conversations SET updated_at = ?, <col> = ? ... WHERE id = ? RETURNING ...``;
    with ``untitled_only`` also ``AND title IS NULL`` (an automatic title never overwrites a
    rename made meanwhile: the check and the write are one statement)."""
    unknown = set(columns) - set(UPDATABLE)
    if unknown:  # pragma: no cover - a programming error, never user input
        raise ValueError(f"not updatable: {sorted(unknown)}")
    sets = ", ".join(["updated_at = ?", *(f"{c} = ?" for c in columns)])
    where = "id = ? AND title IS NULL" if untitled_only else "id = ?"
    return f"UPDATE conversations SET {sets} WHERE {where} RETURNING {CONV_COLS}"


DELETE_MESSAGES = "DELETE FROM messages WHERE conversation_id = ?"
DELETE_CONVERSATION = "DELETE FROM conversations WHERE id = ?"
#: Owners, read (and on PostgreSQL locked, with the dialect's clause) by a write on their behalf.
CONVERSATION_GENERATION = "SELECT generation FROM conversations WHERE id = ?"
USER_GENERATION = "SELECT generation FROM users WHERE id = ?"
#: What a deletion locks first, so writes in flight on behalf of these owners are ordered
#: before it or refused after it (see owner.py); the dialect's ``for_update`` is appended.
LOCK_CONVERSATION = "SELECT id FROM conversations WHERE id = ?"
LOCK_USER_CONVERSATIONS = "SELECT id FROM conversations WHERE user_id = ?"
LOCK_STALE_CONVERSATIONS = "SELECT id FROM conversations WHERE updated_at < ?"
LOCK_USER = "SELECT id FROM users WHERE id = ?"


def conversation(row: Sequence[Any]) -> Conversation:
    return Conversation(
        id=row[0], user_id=row[1], title=row[2], persona=row[3], model=row[4],
        created_at=row[5], updated_at=row[6], last_seq=row[7], meta=json.loads(row[8]),
        name=row[9] or row[0],  # a row written before names existed: its id
        generation=row[10],
    )


def conversation_row(c: Conversation) -> tuple[Any, ...]:
    return (c.id, c.user_id, c.title, c.persona, c.model, c.created_at, c.updated_at, c.last_seq,
            json.dumps(c.meta), c.name, c.generation)


# -- the log ---------------------------------------------------------------------------------------

MSG_COLS = (
    "conversation_id, seq, role, content, created_at, model, input_tokens, output_tokens, "
    "cache_write_tokens, cache_read_tokens, cost_usd, meta"
)
MSG_NCOLS = 12
#: One statement locks the conversation's row, numbers the batch and stamps the activity; the
#: appender computes the first seq from the returned last_seq (and checks the generation).
ADVANCE_LAST_SEQ = (
    "UPDATE conversations SET last_seq = last_seq + ?, updated_at = ? WHERE id = ? "
    "RETURNING last_seq, generation, turn_fence"
)


def claim_turn_sql(d: Dialect) -> str:
    """A turn that took the conversation's lock writes its fence (store/locks.py, Fencing);
    returns the record's generation and last_seq (no row: no record), so a turn learns from the
    claim whether anything was appended since its last read (``claim_turn_read``). On PostgreSQL the one statement's commit does not wait
    for the WAL flush (``set_config(..., true)`` is local to its transaction): a claim lost in a
    server crash is as if it was never made, so the turn that made it finds another fence at
    its first append and stores nothing, and a turn's first durable append flushes its claim
    with it (the WAL is flushed in order). A turn then pays one round trip, not a flush (the
    flush measured 30 ms on a loaded machine). SQLite's commits do not flush anyway (WAL mode,
    synchronous=NORMAL)."""
    if d.name == "postgres":
        return ("WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true)) "
                "UPDATE conversations SET turn_fence = %s FROM lazy WHERE id = %s "
                "RETURNING generation, last_seq")
    return "UPDATE conversations SET turn_fence = ? WHERE id = ? RETURNING generation, last_seq"
LOAD_MESSAGES = (
    f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
CONVERSATION_EXISTS = "SELECT 1 FROM conversations WHERE id = ?"


def existing_conversations_sql(n: int) -> str:
    """Which of ``n`` conversation ids still have a record (the caches' sweep, colloquy.caches)."""
    return f"SELECT id FROM conversations WHERE id IN ({', '.join(['?'] * n)})"
#: The new messages with the conversation's generation and last_seq, in one statement (one
#: snapshot): a row per message, or one row of NULL message columns when there is none.
READ_LOG = (
    "SELECT c.generation, c.last_seq, "
    + ", ".join(f"m.{c.strip()}" for c in MSG_COLS.split(","))
    + " FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq > ? "
    "WHERE c.id = ? ORDER BY m.seq LIMIT ?"
)


def insert_messages_sql(rows: int) -> str:
    return f"INSERT INTO messages ({MSG_COLS}) VALUES {values(rows, MSG_NCOLS)}"


def find_by_idempotency_key_sql(d: Dialect) -> str:
    return f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND {d.idempotency_expr} = ?"


def stored_message(row: Sequence[Any], message: Message | None = None) -> StoredMessage:
    """A message row as read back; ``message``: the row's message as the writer holds it (an
    append returns the very Message it was given instead of parsing the JSON it just wrote:
    the same value, and the token estimate memoised on it holds)."""
    usage = None
    if row[6] is not None or row[7] is not None:
        usage = Usage(
            input_tokens=row[6] or 0, output_tokens=row[7] or 0,
            cache_write_tokens=row[8] or 0, cache_read_tokens=row[9] or 0,
        )
    return StoredMessage(
        conversation_id=row[0], seq=row[1],
        message=message if message is not None else Message.model_validate(
            {"role": row[2], "content": json.loads(row[3])}, context=STORED),
        created_at=row[4], model=row[5], usage=usage, cost_usd=row[10], meta=json.loads(row[11]),
    )


def appended(row: Sequence[Any], m: NewMessage) -> StoredMessage:
    """What :func:`stored_message` would read back from a row just written from ``m``, built
    from ``m`` without validating again (the NewMessage was validated, its meta cleaned by the
    text rules; a JSON round trip keeps it so): an append's StoredMessage cost about a tenth of
    a JSON turn's CPU in validation (issue 16). Usage reads back with its four counts and
    ``estimated`` as the meta says (StoredMessage's rule)."""
    usage = m.usage
    if usage is not None and usage.estimated != bool(m.meta.get(USAGE_ESTIMATED)):
        usage = usage.model_copy(update={"estimated": not usage.estimated})
    return StoredMessage.model_construct(
        conversation_id=row[0], seq=row[1], message=m.message, created_at=row[4],
        usage=usage, model=row[5], cost_usd=row[10], meta=_meta(row[11]))


def message_row(conversation_id: str, seq: int, m: NewMessage, now: float) -> tuple[Any, ...]:
    u = m.usage
    return (
        conversation_id, seq, m.message.role,
        json.dumps([b.model_dump(mode="json", exclude_none=True) for b in m.message.content]),
        now, m.model,
        u.input_tokens if u else None, u.output_tokens if u else None,
        u.cache_write_tokens if u else None, u.cache_read_tokens if u else None,
        m.cost_usd, json.dumps(m.meta) if m.meta else "{}",  # a user message's is mostly empty
    )


def _meta(text: str) -> dict[str, Any]:
    """A meta column read back: ``json.loads``, without the parser for the common ``{}``."""
    return {} if text == "{}" else json.loads(text)


# -- users -----------------------------------------------------------------------------------------

USER_COLS = "id, created_at, generation"
SELECT_USER = f"SELECT {USER_COLS} FROM users WHERE id = ?"
ROTATE_TOKEN = "UPDATE users SET token_hash = ? WHERE id = ?"
INSERT_USER = "INSERT INTO users (id, token_hash, created_at, generation) VALUES (?, ?, ?, ?)"
USER_FOR_TOKEN_HASH = f"SELECT {USER_COLS} FROM users WHERE token_hash = ?"
LIST_USERS = f"SELECT {USER_COLS} FROM users ORDER BY id"
DELETE_USER = "DELETE FROM users WHERE id = ?"


def user(row: Sequence[Any]) -> User:
    return User(id=row[0], created_at=row[1], generation=row[2])


# -- memory records: summaries, facts, cursors ------------------------------------------------------

SUM_COLS = "id, conversation_id, start_seq, end_seq, text, model, previous_id, created_at, meta"
INSERT_SUMMARY = (
    f"INSERT INTO summaries ({SUM_COLS}) VALUES ({', '.join(['?'] * 9)}) ON CONFLICT (id) DO NOTHING"
)
LATEST_SUMMARY = (
    f"SELECT {SUM_COLS} FROM summaries WHERE conversation_id = ? AND end_seq <= ? "
    "ORDER BY end_seq DESC, created_at DESC LIMIT 1"
)
LIST_SUMMARIES = f"SELECT {SUM_COLS} FROM summaries WHERE conversation_id = ? ORDER BY end_seq, created_at"

FACT_COLS = ("id, user_id, subject, statement, norm, source_conversation, source_seq, valid_from, "
             "valid_until, superseded_by, origin, created_at, meta")
#: At most one active fact per user and normalised statement (index facts_one_active,
#: migration 0610): a concurrent duplicate inserts nothing, and the writer reads the one kept.
INSERT_FACT = (
    f"INSERT INTO facts ({FACT_COLS}) VALUES ({', '.join(['?'] * 13)}) "
    "ON CONFLICT (user_id, norm) WHERE valid_until IS NULL DO NOTHING"
)
ACTIVE_FACT_BY_NORM = (
    f"SELECT {FACT_COLS} FROM facts WHERE user_id = ? AND norm = ? AND valid_until IS NULL "
    "AND id <> ? ORDER BY created_at LIMIT 1"
)
SELECT_FACT = f"SELECT {FACT_COLS} FROM facts WHERE id = ?"
RETIRE_FACT = "UPDATE facts SET valid_until = ?, superseded_by = ? WHERE id = ? AND valid_until IS NULL"
LIST_FACTS = f"SELECT {FACT_COLS} FROM facts WHERE user_id = ? ORDER BY valid_from, created_at"
LIST_ACTIVE_FACTS = (
    f"SELECT {FACT_COLS} FROM facts WHERE user_id = ? AND valid_until IS NULL "
    "ORDER BY valid_from, created_at"
)
DELETE_USER_FACTS = "DELETE FROM facts WHERE user_id = ?"
DELETE_FACT = "DELETE FROM facts WHERE user_id = ? AND id = ?"

SELECT_CURSOR = "SELECT seq FROM memory_cursors WHERE conversation_id = ? AND kind = ?"
UPSERT_CURSOR = (
    "INSERT INTO memory_cursors (conversation_id, kind, seq) VALUES (?, ?, ?) "
    "ON CONFLICT (conversation_id, kind) DO UPDATE SET seq = excluded.seq"
)


def summary(row: Sequence[Any]) -> Summary:
    return Summary(id=row[0], conversation_id=row[1], start_seq=row[2], end_seq=row[3],
                   text=row[4], model=row[5] or "", previous_id=row[6], created_at=row[7],
                   meta=json.loads(row[8]))


def summary_row(s: Summary) -> tuple[Any, ...]:
    return (s.id, s.conversation_id, s.start_seq, s.end_seq, s.text, s.model, s.previous_id,
            s.created_at, json.dumps(s.meta))


def fact(row: Sequence[Any]) -> Fact:
    return Fact(id=row[0], user_id=row[1], subject=row[2], statement=row[3],
                source_conversation=row[5], source_seq=row[6], valid_from=row[7],
                valid_until=row[8], superseded_by=row[9], origin=row[10], created_at=row[11],
                meta=json.loads(row[12]))


def fact_row(f: Fact) -> tuple[Any, ...]:
    return (f.id, f.user_id, f.subject, f.statement, f.key, f.source_conversation, f.source_seq,
            f.valid_from, f.valid_until, f.superseded_by, f.origin, f.created_at,
            json.dumps(f.meta))


# -- the service's rate limit ---------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def take_rate_sql(d: Dialect) -> str:
    """GCRA in one statement (see colloquy.server.ratelimit): with ``T`` the emission interval
    (seconds per request) and ``B`` the burst, a request at ``now`` is allowed when
    ``max(tat, now) + T - now <= B * T``, and then ``tat`` becomes ``max(tat, now) + T``. The
    row keeps whether the last request was allowed, so one statement answers both ways. The
    clock is the database's (:attr:`Dialect.now`), the same for every process and machine.
    Arguments: user_id, T (insert), then T, B*T, T, T, B*T (update): :func:`take_rate_args`.
    Returns (tat, allowed, now)."""
    base = f"{d.greatest}(rate_limits.tat, {d.now})"
    ok = f"({base} + ? - {d.now} <= ?)"
    return (
        f"INSERT INTO rate_limits (user_id, tat, allowed) VALUES (?, {d.now} + ?, 1) "
        f"ON CONFLICT (user_id) DO UPDATE SET "
        f"tat = CASE WHEN {ok} THEN {base} + ? ELSE rate_limits.tat END, "
        f"allowed = CASE WHEN {ok} THEN 1 ELSE 0 END "
        f"RETURNING tat, allowed, {d.now}"
    )


def take_rate_args(user_id: str, interval: float, burst: int) -> tuple[Any, ...]:
    return (user_id, interval, interval, burst * interval, interval, interval, burst * interval)


__all__ = ["POSTGRES", "SQLITE", "Dialect"]
