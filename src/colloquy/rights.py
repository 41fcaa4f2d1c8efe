"""Data rights: export everything held about a user, import it back, delete it for good, and
purge old conversations (retention).

Why tables are discovered, not listed: other parts of colloquy keep derived records beside the
log (summaries, facts, cursors, usage, users of the service), and more will come. A table that
follows the convention is covered the moment its migration runs:

* a ``user_id`` column: its rows with that user id belong to the user;
* a ``conversation_id`` column: its rows of the user's conversations belong to the user;
* anything else registers with :func:`register_user_table` (``users`` is keyed by ``id``).

A table with neither (``schema_migrations``) holds nothing about anyone.

Why "for good" needs more than DELETE: databases keep deleted bytes around. SQLite leaves them
in free pages and in the write-ahead log; PostgreSQL leaves dead tuples in the table's pages. So
deletion here is followed by erasure: on SQLite ``secure_delete`` (zeroes freed content), a WAL
checkpoint that truncates the log file, and ``VACUUM`` (rewrites the file from live rows only);
on PostgreSQL ``VACUUM FULL`` of every table that can hold user data, touched or not (rewrites it
into new files; the old ones are truncated), since rows the user deleted earlier left dead tuples
in tables that no longer hold any row of theirs. What a database engine cannot erase: PostgreSQL's own WAL segments and any backups
or replicas keep the bytes until they are recycled (see the README, PostgreSQL).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .branches import superseded_by
from .errors import ConfigError, StoreError
from .store import Store
from .rights_import import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    check_against_store,
    plan_import,
    write_plan,
)
from .store.base import forget_cached
from .store.sqlite import checkpoint_truncate
from .store.queries import (
    LOCK_STALE_CONVERSATIONS,
    LOCK_USER,
    LOCK_USER_CONVERSATIONS,
    POSTGRES,
    SQLITE,
    Dialect,
)
from .text import clean_json_text

#: Tables that never hold anything about a user.
SKIP_TABLES = {"schema_migrations"}
#: Columns that are no data about anyone: a record's generation (store/owner.py) is set anew
#: by an import, as for any record created again; a conversation's turn fence (store/locks.py)
#: belongs to the turn in flight that wrote it.
_NOT_EXPORTED = {"generation", "turn_fence"}
_ALL = 10**9


@dataclass(frozen=True)
class UserTable:
    """How a table's rows are tied to a user: a column holding the user id, and/or a column
    holding a conversation id."""

    user_column: str | None = None
    conversation_column: str | None = None


_REGISTRY: dict[str, UserTable] = {
    "users": UserTable(user_column="id"),
    "conversations": UserTable(user_column="user_id", conversation_column="id"),
}


def register_user_table(
    table: str, *, user_column: str | None = None, conversation_column: str | None = None
) -> None:
    """Tell export, delete and purge how ``table`` ties to a user when it does not follow the
    ``user_id`` / ``conversation_id`` column convention."""
    if not (user_column or conversation_column):
        raise ConfigError("register_user_table needs a user_column or a conversation_column")
    _REGISTRY[table] = UserTable(user_column, conversation_column)


# -- reports --------------------------------------------------------------------------------------


@dataclass
class DeleteReport:
    user_id: str | None
    #: Rows deleted per table.
    rows: dict[str, int] = field(default_factory=dict)
    conversations: int = 0
    #: What was done to erase the bytes, in order.
    erasure: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass
class ImportReport:
    user_id: str
    rows: dict[str, int] = field(default_factory=dict)
    conversations: int = 0
    skipped_tables: list[str] = field(default_factory=list)
    #: Ids of facts in the file left out because their statement is blank (older colloquy
    #: stored such facts; they are not a reason to refuse the file).
    dropped_facts: list[str] = field(default_factory=list)


# -- SQL dialects ---------------------------------------------------------------------------------


def _is_sql(store: Store) -> bool:
    return callable(getattr(store, "transaction", None)) and _dialect(store) is not None


def _dialect(store: Store) -> str | None:
    d = getattr(store, "dialect", None)
    return d.name if isinstance(d, Dialect) else None


def _q(dialect: str, sql: str) -> str:
    return (POSTGRES if dialect == "postgres" else SQLITE).q(sql)


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise StoreError(f"unexpected table or column name {name!r}")
    return f'"{name}"'


def discover_tables(store: Store) -> dict[str, list[str]]:
    """Every table of the store's database that can hold rows, with its columns (SQLite FTS
    shadow tables and internal tables excluded)."""
    dialect = _dialect(store)
    with store.transaction(write=False) as conn:  # type: ignore[attr-defined]
        if dialect == "sqlite":
            rows = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
            ).fetchall()
            virtual = [n for n, s in rows if (s or "").upper().startswith("CREATE VIRTUAL TABLE")]
            out: dict[str, list[str]] = {}
            for name, _ in rows:
                if any(name.startswith(f"{v}_") for v in virtual):
                    continue  # an FTS shadow table: changed through its virtual table
                out[name] = [c[1] for c in conn.execute(f"PRAGMA table_info({_ident(name)})")]
            return out
        rows = conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema "
            "AND t.table_name = c.table_name "
            "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
            "ORDER BY c.table_name, c.ordinal_position"
        ).fetchall()
        pg: dict[str, list[str]] = {}
        for table, column in rows:
            pg.setdefault(table, []).append(column)
        return pg


def _virtual_tables(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'"
    ).fetchall()
    return [r[0] for r in rows]


def user_tables(tables: dict[str, list[str]]) -> dict[str, UserTable]:
    """The tables that hold rows about users, and how (registry first, then the convention)."""
    out: dict[str, UserTable] = {}
    for name, cols in tables.items():
        if name in SKIP_TABLES:
            continue
        if name in _REGISTRY:
            spec = _REGISTRY[name]
            if (spec.user_column is None or spec.user_column in cols) and (
                spec.conversation_column is None or spec.conversation_column in cols
            ):
                out[name] = spec
            continue
        spec = UserTable(
            user_column="user_id" if "user_id" in cols else None,
            conversation_column="conversation_id" if "conversation_id" in cols else None,
        )
        if spec.user_column or spec.conversation_column:
            out[name] = spec
    return out


def _where(spec: UserTable, scope: str) -> str:
    """The WHERE clause selecting a table's rows in a scope: ``user`` (one ? = the user id) or
    ``stale`` (one ? = the cutoff time). Conversations are matched by sub-select, so the
    ``conversations`` rows must be deleted last."""
    parts: list[str] = []
    if scope == "user":
        if spec.user_column:
            parts.append(f"{_ident(spec.user_column)} = ?")
        if spec.conversation_column:
            parts.append(f"{_ident(spec.conversation_column)} IN "
                         "(SELECT id FROM conversations WHERE user_id = ?)")
    else:
        if spec.conversation_column:
            parts.append(f"{_ident(spec.conversation_column)} IN "
                         "(SELECT id FROM conversations WHERE updated_at < ?)")
    return " OR ".join(parts)


def _order(tables: Iterable[str]) -> list[str]:
    """Dependent rows first: conversations and users last (others reference them)."""
    last = ["conversations", "users"]
    return [t for t in tables if t not in last] + [t for t in last if t in tables]


# -- export ---------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, str):  # rows stored before the text rules may hold what JSON cannot
        return clean_json_text(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _plain(value: Any) -> Any:
    """``value`` (a stored message, its blocks, JSON values) as plain JSON values, without
    pydantic's serialiser: what ``model_dump(mode="json", exclude_none=True)`` gives, for
    values nested deeper than that serialiser goes. Iterative: any depth."""
    def shallow(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return {k: x for k, x in {**v.__dict__, **(v.__pydantic_extra__ or {})}.items()
                    if x is not None}
        return v
    root: list[Any] = [shallow(value)]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        v = parent[key]
        if isinstance(v, dict):
            parent[key] = v = {k: shallow(x) for k, x in v.items()}
        elif isinstance(v, (list, tuple)):
            parent[key] = v = [shallow(x) for x in v]
        else:
            if not (isinstance(v, (str, int, float, bool)) or v is None):
                parent[key] = _jsonable(v)
            continue
        stack.extend((v, k) for k in (v if isinstance(v, dict) else range(len(v))))
    return root[0]


def _messages(store: Store, conversation_id: str) -> list[dict[str, Any]]:
    """A conversation's log for an export. Every message is kept; one an edit or a
    regeneration replaced is marked with ``superseded_by`` (colloquy.branches)."""
    log_ = store.load(conversation_id)
    gone = superseded_by(log_)
    out = []
    for sm in log_:
        try:
            row = sm.model_dump(mode="json", exclude={"conversation_id"}, exclude_none=True)
        except ValueError:  # pydantic's serialiser stops at ~250 levels: a row stored before
            # MAX_JSON_DEPTH existed is exported anyway, walked as plain values
            row = _plain(sm)
            row.pop("conversation_id", None)
        if sm.seq in gone:
            row["superseded_by"] = gone[sm.seq]
        out.append(row)
    return out


def export_user(store: Store, user_id: str) -> dict[str, Any]:
    """Everything held about ``user_id``: readable sessions, and every row of every table that
    holds user data (``tables``, what :func:`import_user` restores from)."""
    convs = store.list_conversations(user_id=user_id, limit=_ALL)
    sessions = [{"conversation": c.model_dump(mode="json", exclude={"generation"}),
                 "messages": _messages(store, c.id)} for c in convs]
    data: dict[str, Any] = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "user_id": user_id,
        "exported_at": time.time(), "sessions": sessions,
    }
    if _is_sql(store):
        dialect = _dialect(store)
        assert dialect is not None
        tables: dict[str, Any] = {}
        specs = user_tables(discover_tables(store))
        all_cols = discover_tables(store)
        with store.transaction(write=False) as conn:  # type: ignore[attr-defined]
            for name in ["users", "conversations", *[t for t in specs if t not in ("users", "conversations")]]:
                if name not in specs:
                    continue
                where = _where(specs[name], "user")
                cols = [c for c in all_cols[name] if c not in _NOT_EXPORTED]
                rows = conn.execute(
                    _q(dialect, f"SELECT {', '.join(_ident(c) for c in cols)} FROM {_ident(name)} "
                                f"WHERE {where}"),
                    (user_id,) * where.count("?"),
                ).fetchall()
                tables[name] = {"columns": cols, "rows": [[_jsonable(v) for v in r] for r in rows]}
        data["tables"] = tables
    else:
        facts = getattr(store, "list_facts", None)
        if callable(facts):
            data["facts"] = [f.model_dump(mode="json") for f in facts(user_id, include_retired=True)]
        summaries = getattr(store, "list_summaries", None)
        if callable(summaries):
            data["summaries"] = [s.model_dump(mode="json") for c in convs for s in summaries(c.id)]
    return data


# -- import ---------------------------------------------------------------------------------------


def import_user(store: Store, data: dict[str, Any], *, replace: bool = False) -> ImportReport:
    """Restore an export, trusting nothing in it (see :mod:`colloquy.rights_import`): only the
    named user's conversations, messages, summaries, facts and cursors are written, every row
    validated first; users and tokens are never created from a file. Raises
    :class:`~colloquy.errors.ImportRefused` (nothing written) for anything else.

    Refuses to overwrite: if the user already has conversations or facts here, it fails unless
    ``replace``, which deletes them (not the user's account) in the same transaction."""
    plan = plan_import(data)
    user_id = plan.user_id
    facts = getattr(store, "list_facts", None)
    held = bool(store.list_conversations(user_id=user_id, limit=1)) or bool(
        callable(facts) and facts(user_id, include_retired=True))
    if held and not replace:
        raise StoreError(f"user {user_id!r} already has conversations or facts here; "
                         "use --replace to overwrite them")
    check_against_store(store, plan)  # ids held here by another user refuse the file
    report = ImportReport(user_id=user_id, skipped_tables=plan.skipped_tables,
                          dropped_facts=plan.dropped_facts)
    gone = [c.id for c in store.list_conversations(user_id=user_id, limit=_ALL)]
    if _is_sql(store):
        specs = {t: s for t, s in user_tables(discover_tables(store)).items()
                 if t != "users"}  # the account (and its token) stays
        with store.transaction() as conn:  # type: ignore[attr-defined]
            if held:
                _delete_rows(store, conn, specs, "user", user_id, DeleteReport(user_id=user_id))
            write_plan(store, plan, conn)
    else:
        if held:
            _delete_through_store(store, user_id, DeleteReport(user_id=user_id))
        write_plan(store, plan, None)
    forget_cached(gone, store)
    report.rows = plan.counts()
    report.conversations = len(plan.conversations)
    return report


# -- delete and purge -----------------------------------------------------------------------------


def delete_user(store: Store, user_id: str, *, erase: bool = True) -> DeleteReport:
    """Remove every row about ``user_id`` from every table (derived ones included) and, with
    ``erase``, make the bytes unrecoverable from the database files (see the module docstring)."""
    report = DeleteReport(user_id=user_id)
    if not _is_sql(store):
        _delete_through_store(store, user_id, report)
        remove = getattr(store, "remove_user", None)
        if callable(remove):
            report.rows["users"] = int(bool(remove(user_id)))
        forget_rate = getattr(store, "forget_rate", None)  # the memory store's, in process
        if callable(forget_rate):
            report.rows["rate_limits"] = int(forget_rate(user_id))
        return report
    gone = [c.id for c in store.list_conversations(user_id=user_id, limit=_ALL)]
    _delete_sql(store, "user", user_id, report)
    forget_cached(gone, store)  # the running process's recall indexes and summary caches too
    if erase:
        erase_deleted(store, [t for t, n in report.rows.items() if n], report)
    return report


def _delete_through_store(store: Store, user_id: str, report: DeleteReport) -> None:
    """The user's conversations (with their messages) and facts, through the Store interface."""
    convs = store.list_conversations(user_id=user_id, limit=_ALL)
    for c in convs:
        n = len(store.load(c.id))
        store.delete_conversation(c.id)
        report.rows["messages"] = report.rows.get("messages", 0) + n
    report.rows["conversations"] = report.conversations = len(convs)
    forget = getattr(store, "forget_facts", None)
    if callable(forget):
        report.rows["facts"] = int(forget(user_id))


def purge_conversations(store: Store, older_than: float, *, now: float | None = None, erase: bool = True) -> DeleteReport:
    """Delete every conversation with no activity for ``older_than`` seconds, with everything
    derived from it (messages, summaries, cursors, indexes). Facts stay with their user."""
    cutoff = (time.time() if now is None else now) - older_than
    report = DeleteReport(user_id=None)
    if not _is_sql(store):
        stale = [c for c in store.list_conversations(limit=_ALL) if c.updated_at < cutoff]
        for c in stale:
            report.rows["messages"] = report.rows.get("messages", 0) + len(store.load(c.id))
            store.delete_conversation(c.id)
        report.rows["conversations"] = report.conversations = len(stale)
        return report
    gone = [c.id for c in store.list_conversations(limit=_ALL) if c.updated_at < cutoff]
    _delete_sql(store, "stale", cutoff, report)
    forget_cached(gone, store)
    if erase and report.total:
        erase_deleted(store, [t for t, n in report.rows.items() if n], report)
    return report


def _delete_sql(store: Store, scope: str, arg: Any, report: DeleteReport) -> None:
    specs = user_tables(discover_tables(store))
    with store.transaction() as conn:  # type: ignore[attr-defined]
        _delete_rows(store, conn, specs, scope, arg, report)


def _delete_rows(store: Store, conn: Any, specs: dict[str, UserTable], scope: str, arg: Any,
                 report: DeleteReport) -> None:
    """Delete, inside the caller's transaction, the rows of a scope (see :func:`_where`) from
    the tables of ``specs`` (:func:`user_tables`)."""
    dialect = _dialect(store)
    assert dialect is not None
    if scope == "stale":
        specs = {t: s for t, s in specs.items() if s.conversation_column}
        specs["conversations"] = UserTable(conversation_column="id")
    # Lock the owners first: writes in flight on their behalf (a fact, a summary, a title)
    # commit before this deletion, and are deleted with the rest, or find them gone.
    lock = store.lock_for_deletion  # type: ignore[attr-defined]
    if scope == "user":
        lock(conn, LOCK_USER, arg)
        lock(conn, LOCK_USER_CONVERSATIONS, arg)
    else:
        lock(conn, LOCK_STALE_CONVERSATIONS, arg)
    virtual = set(_virtual_tables(conn)) if dialect == "sqlite" else set()
    for name in _order(specs):
        spec = specs[name]
        if scope == "stale" and name == "conversations":
            where = "updated_at < ?"
        else:
            where = _where(spec, scope)
        if name == "conversations":
            key = "user_id = ?" if scope == "user" else "updated_at < ?"
            report.conversations = conn.execute(
                _q(dialect, f"SELECT count(*) FROM conversations WHERE {key}"), (arg,)
            ).fetchone()[0]
        cur = conn.execute(
            _q(dialect, f"DELETE FROM {_ident(name)} WHERE {where}"), (arg,) * where.count("?")
        )
        report.rows[name] = max(cur.rowcount, 0)
        if name in virtual and report.rows[name]:
            # FTS5 keeps deleted terms in its segments until they are merged away.
            conn.execute(f"INSERT INTO {_ident(name)}({_ident(name)}) VALUES ('optimize')")


def erase_deleted(store: Store, tables: Sequence[str], report: DeleteReport | None = None) -> list[str]:
    """Make deleted rows unrecoverable from the database files; returns what was done."""
    done: list[str] = []
    dialect = _dialect(store)
    if dialect == "sqlite":
        conn = store._conn()  # type: ignore[attr-defined]  # secure_delete is on (store/sqlite.py)
        conn.execute("VACUUM")  # rebuild the file from live rows only
        done.append("VACUUM")
        if checkpoint_truncate(conn):
            done.append("wal_checkpoint(TRUNCATE)")
        else:
            done.append("wal_checkpoint(TRUNCATE) incomplete: readers kept the WAL busy")
    elif dialect == "postgres":
        from psycopg import sql

        # Every table that can hold user data, not only those this deletion touched: dead
        # tuples of rows deleted earlier (a conversation or a fact the user deleted themselves)
        # stay in a table's files until it is rewritten. Cost: README, Deletion.
        everything = sorted(set(tables) | set(user_tables(discover_tables(store))))
        with store.pool.connection() as conn:  # type: ignore[attr-defined]
            for table in everything:
                conn.execute(sql.SQL("VACUUM (FULL, ANALYZE) {}").format(sql.Identifier(table)))
                done.append(f"VACUUM FULL {table}")
            try:
                conn.execute("CHECKPOINT")
                done.append("CHECKPOINT")
            except Exception:  # noqa: BLE001 - needs superuser or pg_checkpoint; optional
                pass
    if report is not None:
        report.erasure.extend(done)
    return done


__all__ = [
    "DeleteReport",
    "ImportReport",
    "UserTable",
    "delete_user",
    "discover_tables",
    "erase_deleted",
    "export_user",
    "import_user",
    "parse_age",
    "purge_conversations",
    "register_user_table",
    "user_tables",
]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` -> seconds. The unit is required: a bare
    ``0`` (or ``30``) is refused, since a slip there deletes every conversation."""
    m = _AGE.match(text)
    if not m:
        raise ConfigError(f"invalid age {text!r}: use a number and a unit, like 30d, 12h or 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]
