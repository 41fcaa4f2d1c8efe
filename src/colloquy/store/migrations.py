"""Schema migrations: an append-only list, applied in order and recorded in the database.

Why a list and not a schema diff: a database in the field may be at any older version; replaying
the missing named steps in order is the one upgrade path that is easy to test (from a blank
database and from every prefix of the list). Never edit or reorder a released migration: append.

Each migration has SQL per dialect; ``postgres=None`` means the SQLite text is portable as is.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    name: str
    sqlite: str
    postgres: str | None = None

    def sql(self, dialect: str) -> str:
        if dialect == "postgres" and self.postgres is not None:
            return self.postgres
        return self.sqlite


MIGRATIONS: list[Migration] = [
    Migration(
        "0001_conversations_and_messages",
        sqlite="""
        CREATE TABLE conversations (
            id          TEXT PRIMARY KEY,
            user_id     TEXT,
            title       TEXT,
            persona     TEXT NOT NULL DEFAULT '',
            model       TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            last_seq    INTEGER NOT NULL DEFAULT 0,
            meta        TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX conversations_by_user ON conversations (user_id, updated_at);
        CREATE TABLE messages (
            conversation_id     TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq                 INTEGER NOT NULL,
            role                TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content             TEXT NOT NULL,
            created_at          REAL NOT NULL,
            model               TEXT,
            input_tokens        INTEGER,
            output_tokens       INTEGER,
            cache_write_tokens  INTEGER,
            cache_read_tokens   INTEGER,
            cost_usd            REAL,
            meta                TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (conversation_id, seq)
        );
        """,
        postgres="""
        CREATE TABLE conversations (
            id          TEXT PRIMARY KEY,
            user_id     TEXT,
            title       TEXT,
            persona     TEXT NOT NULL DEFAULT '',
            model       TEXT NOT NULL DEFAULT '',
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL,
            last_seq    BIGINT NOT NULL DEFAULT 0,
            meta        TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX conversations_by_user ON conversations (user_id, updated_at);
        CREATE TABLE messages (
            conversation_id     TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq                 BIGINT NOT NULL,
            role                TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content             TEXT NOT NULL,
            created_at          DOUBLE PRECISION NOT NULL,
            model               TEXT,
            input_tokens        BIGINT,
            output_tokens       BIGINT,
            cache_write_tokens  BIGINT,
            cache_read_tokens   BIGINT,
            cost_usd            DOUBLE PRECISION,
            meta                TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (conversation_id, seq)
        );
        """,
    ),
    Migration(
        "0300_users",
        sqlite="""
        CREATE TABLE users (
            id          TEXT PRIMARY KEY,
            token_hash  TEXT NOT NULL UNIQUE,
            created_at  REAL NOT NULL
        );
        """,
        postgres="""
        CREATE TABLE users (
            id          TEXT PRIMARY KEY,
            token_hash  TEXT NOT NULL UNIQUE,
            created_at  DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    Migration(
        # Idempotency keys ride in a user message's meta; the unique index makes a retried
        # request impossible to store twice and its lookup one index probe. The activity index
        # serves retention (purge --older-than).
        "0200_idempotency_and_activity",
        sqlite="""
        CREATE UNIQUE INDEX messages_idempotency
            ON messages (conversation_id, json_extract(meta, '$.idempotency_key'))
            WHERE json_extract(meta, '$.idempotency_key') IS NOT NULL;
        CREATE INDEX conversations_by_activity ON conversations (updated_at);
        """,
        postgres="""
        CREATE UNIQUE INDEX messages_idempotency
            ON messages (conversation_id, ((meta::jsonb) ->> 'idempotency_key'))
            WHERE ((meta::jsonb) ->> 'idempotency_key') IS NOT NULL;
        CREATE INDEX conversations_by_activity ON conversations (updated_at);
        """,
    ),
    Migration(
        # Derived memory records (issue 3): summaries cover a seq range of one conversation and
        # go with it; facts belong to a user and outlive conversations (no foreign key);
        # cursors remember how far fact extraction has read each conversation.
        "0100_memory_records",
        sqlite="""
        CREATE TABLE summaries (
            id               TEXT PRIMARY KEY,
            conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            start_seq        INTEGER NOT NULL,
            end_seq          INTEGER NOT NULL,
            text             TEXT NOT NULL,
            model            TEXT,
            previous_id      TEXT,
            created_at       REAL NOT NULL,
            meta             TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX summaries_by_end ON summaries (conversation_id, end_seq);
        CREATE TABLE facts (
            id                   TEXT PRIMARY KEY,
            user_id              TEXT NOT NULL,
            subject              TEXT NOT NULL,
            statement            TEXT NOT NULL,
            norm                 TEXT NOT NULL,
            source_conversation  TEXT,
            source_seq           INTEGER,
            valid_from           REAL NOT NULL,
            valid_until          REAL,
            superseded_by        TEXT,
            origin               TEXT NOT NULL DEFAULT 'extracted',
            created_at           REAL NOT NULL,
            meta                 TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX facts_by_user ON facts (user_id, norm);
        CREATE TABLE memory_cursors (
            conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            kind             TEXT NOT NULL,
            seq              INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, kind)
        );
        """,
        postgres="""
        CREATE TABLE summaries (
            id               TEXT PRIMARY KEY,
            conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            start_seq        BIGINT NOT NULL,
            end_seq          BIGINT NOT NULL,
            text             TEXT NOT NULL,
            model            TEXT,
            previous_id      TEXT,
            created_at       DOUBLE PRECISION NOT NULL,
            meta             TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX summaries_by_end ON summaries (conversation_id, end_seq);
        CREATE TABLE facts (
            id                   TEXT PRIMARY KEY,
            user_id              TEXT NOT NULL,
            subject              TEXT NOT NULL,
            statement            TEXT NOT NULL,
            norm                 TEXT NOT NULL,
            source_conversation  TEXT,
            source_seq           BIGINT,
            valid_from           DOUBLE PRECISION NOT NULL,
            valid_until          DOUBLE PRECISION,
            superseded_by        TEXT,
            origin               TEXT NOT NULL DEFAULT 'extracted',
            created_at           DOUBLE PRECISION NOT NULL,
            meta                 TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX facts_by_user ON facts (user_id, norm);
        CREATE TABLE memory_cursors (
            conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            kind             TEXT NOT NULL,
            seq              BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, kind)
        );
        """,
    ),
    Migration(
        # The service's per-user rate limit (GCRA, see server/ratelimit.py): one row per user
        # with the theoretical arrival time of the next request. Keyed by user_id, so data
        # rights find the rows by the column convention. On PostgreSQL the table is UNLOGGED:
        # no WAL write per request, and a crash that empties it only refills every bucket.
        "0400_rate_limits",
        sqlite="""
        CREATE TABLE rate_limits (
            user_id  TEXT PRIMARY KEY,
            tat      REAL NOT NULL,
            allowed  INTEGER NOT NULL
        );
        """,
        postgres="""
        CREATE UNLOGGED TABLE rate_limits (
            user_id  TEXT PRIMARY KEY,
            tat      DOUBLE PRECISION NOT NULL,
            allowed  INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        # Conversation names (issue 12): what a conversation is called in its user's
        # namespace, unique per user, so the same name for two users is two conversations.
        # Existing conversations are named by their id. NULL (a row written by an older
        # version) reads as the id.
        "0500_conversation_names",
        sqlite="""
        ALTER TABLE conversations ADD COLUMN name TEXT;
        UPDATE conversations SET name = id;
        CREATE UNIQUE INDEX conversations_by_name ON conversations (user_id, name);
        """,
    ),
    Migration(
        # A conversation's and a user's *generation*: a random token set when the record is
        # created, so a record deleted and created anew under the same id is told apart from
        # the old one. Every cached view (another process's Chat, recall index, summary cache)
        # checks it with each read, and writes made on behalf of an owner check it in their
        # transaction (issue 12). Records from before this migration have generation ''.
        "0600_generations",
        sqlite="""
        ALTER TABLE conversations ADD COLUMN generation TEXT NOT NULL DEFAULT '';
        ALTER TABLE users ADD COLUMN generation TEXT NOT NULL DEFAULT '';
        """,
    ),
    Migration(
        # "The same fact twice is kept once", by the database: at most one active fact per
        # user and normalised statement, whatever the number of concurrent writers. Duplicates
        # left by earlier versions are retired first, superseded by the oldest copy.
        "0610_one_active_fact",
        sqlite="""
        UPDATE facts SET valid_until = valid_from, superseded_by = (
            SELECT k.id FROM facts k WHERE k.user_id = facts.user_id AND k.norm = facts.norm
            AND k.valid_until IS NULL ORDER BY k.created_at, k.id LIMIT 1)
        WHERE valid_until IS NULL AND id <> (
            SELECT k.id FROM facts k WHERE k.user_id = facts.user_id AND k.norm = facts.norm
            AND k.valid_until IS NULL ORDER BY k.created_at, k.id LIMIT 1);
        CREATE UNIQUE INDEX facts_one_active ON facts (user_id, norm) WHERE valid_until IS NULL;
        """,
    ),
    Migration(
        # The turn fence (store/locks.py, "Fencing"): a token each turn writes into its
        # conversation's record when it takes the turn lock; the turn's appends commit only
        # while the record still holds it, so a turn whose lock was lost (its PostgreSQL
        # session dropped) and taken by another turn stores nothing after the loss.
        "0700_turn_fence",
        sqlite="ALTER TABLE conversations ADD COLUMN turn_fence TEXT;",
    ),
]


def split_sql(script: str) -> list[str]:
    """Split a script into statements, keeping trigger bodies (``BEGIN ... END;``) whole."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
