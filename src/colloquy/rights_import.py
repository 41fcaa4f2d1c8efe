"""Import of a user export: the file is untrusted input.

An export is a file a user carries around (and may edit, or be handed by someone else), so
``import_user`` trusts nothing in it:

* **One user.** It writes only the conversations, messages, summaries, facts and memory
  cursors of the user the file names. A conversation or fact filed under another user, a
  message, summary or cursor of a conversation the file does not carry, a fact whose source is
  another user's conversation here: the whole file is refused.
* **No accounts.** Service users and their tokens are never created or changed from a file:
  the ``users`` table of an export is skipped (the user gets a token from ``colloquy users
  add``), and so is every table import does not own (a plugin's table, anything unknown):
  their rows cannot be validated, so none is written. The report names the skipped tables.
* **Every row validated** before anything is written: JSON types (no string for a number, no
  bool for an int, no NaN), sizes (:data:`LIMITS`), the message schema (roles, content blocks,
  image sources), dense sequence numbers ``1..last_seq`` per conversation, unique ids and
  idempotency keys. The first problem refuses the whole file with :class:`ImportRefused`,
  one line naming the table, row and field; nothing is written.
* **Nothing taken over.** A conversation id or fact id that exists here under another user is
  refused, never overwritten.

Then the rows are written in one transaction (SQL stores, row for row with their timestamps) or
through the Store interface (the memory store).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .errors import ConfigError, ImportRefused, InvalidTextError
from .memory.records import Fact, Summary
from .messages import (
    IMAGE_MEDIA_TYPES,
    IMPORTED,
    MAX_JSON_DEPTH,
    ImageBlock,
    Message,
    StoredMessage,
    ToolResultBlock,
    json_problem,
    parse_json,
)
from .store import Conversation, NewMessage, Store
from .store.turns import IDEMPOTENCY_KEY
from .text import clean, clean_json, is_blank, require_name
from .usage import Usage

#: Size limits of imported values, in characters (JSON text for meta and content). Far above
#: what colloquy itself stores; a file over them was not written by colloquy.
LIMITS: dict[str, int] = {
    "id": 256,            # conversation, fact and summary ids, user ids
    "name": 256,          # short labels: model names, cursor kinds, fact subjects
    "title": 10_000,
    "text": 4_000_000,    # personas, fact statements, summaries
    "content": 32_000_000,  # one message's content blocks: Anthropic's 32 MB request limit
    "meta": 1_000_000,
}
#: The deepest nesting an export file may hold: a content block sits 8 levels deep in it and
#: holds MAX_JSON_DEPTH levels itself. Checked before any parser or check that recurses.
MAX_IMPORT_DEPTH = 2 * MAX_JSON_DEPTH
EXPORT_FORMAT = "colloquy.user-export"
EXPORT_VERSION = 1
#: The tables import restores; every other table in a file is skipped (see the docstring).
RESTORED_TABLES = ("conversations", "messages", "summaries", "facts", "memory_cursors")
_IMAGE_TYPES = IMAGE_MEDIA_TYPES


@dataclass
class ImportPlan:
    """The validated content of an export, ready to write."""

    user_id: str
    conversations: list[Conversation] = field(default_factory=list)
    messages: list[StoredMessage] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    #: (conversation_id, kind, seq)
    cursors: list[tuple[str, str, int]] = field(default_factory=list)
    skipped_tables: list[str] = field(default_factory=list)
    #: Ids of the facts left out because their statement is blank (see _drop_blank_facts).
    dropped_facts: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows per table (tables with none left out)."""
        return {t: n for t, n in (
            ("conversations", len(self.conversations)), ("messages", len(self.messages)),
            ("summaries", len(self.summaries)), ("facts", len(self.facts)),
            ("memory_cursors", len(self.cursors))) if n}


# -- values --------------------------------------------------------------------------------------


class _Row:
    """One row of the file, read field by field with type and size checks."""

    def __init__(self, where: str, values: Mapping[str, Any]) -> None:
        self.where, self.values = where, values

    def refuse(self, problem: str) -> ImportRefused:
        return ImportRefused(f"refused to import: {self.where}: {problem}; nothing was written")

    def text(self, name: str, limit: str, *, optional: bool = False, empty: bool = True,
            default: str | None = None) -> Any:
        v = self.values.get(name, default)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.refuse(f"{name} must be a string, not {_kind(v)}")
        if len(v) > LIMITS[limit]:
            raise self.refuse(f"{name} is {len(v)} characters, over the limit of {LIMITS[limit]}")
        if not empty and is_blank(v):
            raise self.refuse(f"{name} is empty")
        if limit in ("id", "name") and any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise self.refuse(f"{name} holds control characters")
        return clean(v)  # the text rules (colloquy.text): every string of the file is read here

    def integer(self, name: str, *, lo: int = 0, hi: int = 2**62, optional: bool = False,
            default: int | None = None) -> Any:
        v = self.values.get(name, default)
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.refuse(f"{name} must be an integer, not {_kind(v)}")
        if not lo <= v <= hi:
            raise self.refuse(f"{name} {v} is outside {lo}..{hi}")
        return v

    def number(self, name: str, *, optional: bool = False, default: float | None = None) -> Any:
        v = self.values.get(name, default)
        if v is None and optional:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                or v < 0:
            raise self.refuse(f"{name} must be a finite number >= 0, not {_kind(v)}")
        return float(v)

    def json_value(self, name: str, limit: str, shape: type, *, encoded: bool,
             default: Any = None) -> Any:
        """A JSON value stored as text in a table (``encoded``) or inline in ``sessions``."""
        v = self.values.get(name, default)
        if encoded:
            if not isinstance(v, str):
                raise self.refuse(f"{name} must be JSON text, not {_kind(v)}")
            if len(v) > LIMITS[limit]:
                raise self.refuse(f"{name} is over the limit of {LIMITS[limit]} characters")
            try:
                v = parse_json(v, parse_constant=_no_constant)
            except ValueError as e:
                raise self.refuse(f"{name} is not valid JSON ({e})") from e
        elif len(json.dumps(v, ensure_ascii=False, default=str)) > LIMITS[limit]:
            raise self.refuse(f"{name} is over the limit of {LIMITS[limit]} characters")
        if not isinstance(v, shape):
            raise self.refuse(f"{name} must be a JSON {shape.__name__}, not {_kind(v)}")
        return clean_json(v)

    def model(self, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise self.refuse(f"{loc or 'value'}: {err.get('msg', 'invalid')}") from None


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


# -- reading the file ----------------------------------------------------------------------------


def plan_import(data: Any, user_id: str | None = None) -> ImportPlan:
    """Validate an export (see the module docstring) and return what import would write.

    ``user_id`` (when given) must be the user the file names. Raises :class:`ImportRefused`
    (a :class:`ConfigError`) on the first problem."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"not a colloquy user export (expected format {EXPORT_FORMAT!r}, "
                          f"got {got!r})")
    head = _Row("the export", data)
    head.integer("version", lo=0, hi=EXPORT_VERSION, default=0)  # a newer format: refused
    named = head.text("user_id", "id", empty=False)
    if user_id is not None and named != user_id:
        raise head.refuse(f"the file holds user {named!r}, not {user_id!r}")
    problem = json_problem(data, MAX_IMPORT_DEPTH)  # iterative: before anything recurses
    if problem:
        raise head.refuse(f"it {problem}")
    plan = ImportPlan(user_id=named)
    tables = data.get("tables")
    if tables is not None:
        if not isinstance(tables, dict):
            raise head.refuse(f"tables must be an object, not {_kind(tables)}")
        _read_tables(plan, tables)
    else:
        _read_sessions(plan, data)
    _drop_blank_facts(plan)
    _check_references(plan)
    return plan


def _drop_blank_facts(plan: ImportPlan) -> None:
    """Facts whose statement is blank (stored before the text rules refused them) are left out,
    not a reason to refuse a file colloquy itself wrote; a fact they superseded keeps its
    retirement without a successor. Their ids are kept in ``plan.dropped_facts`` so the
    report says what was left out."""
    blank = {f.id for f in plan.facts if is_blank(f.statement)}
    plan.dropped_facts = sorted(blank)  # named in the import's report
    if blank:
        plan.facts = [f if f.superseded_by not in blank else f.model_copy(update={
            "superseded_by": None}) for f in plan.facts if f.id not in blank]


def _table_rows(name: str, table: Any) -> Iterable[_Row]:
    where = f"table {name}"
    if not isinstance(table, dict) or not isinstance(table.get("columns"), list) \
            or not isinstance(table.get("rows"), list):
        raise ImportRefused(f"refused to import: {where}: expected columns and rows; "
                            "nothing was written")
    columns = table["columns"]
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
        raise ImportRefused(f"refused to import: {where}: invalid column names; "
                            "nothing was written")
    for i, row in enumerate(table["rows"], 1):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ImportRefused(f"refused to import: {where} row {i}: expected "
                                f"{len(columns)} values; nothing was written")
        yield _Row(f"{where} row {i}", dict(zip(columns, row)))


def _read_tables(plan: ImportPlan, tables: dict[str, Any]) -> None:
    plan.skipped_tables = sorted(  # the tables whose rows were not written (empty ones aside)
        t for t, v in tables.items() if t not in RESTORED_TABLES
        and not (isinstance(v, dict) and v.get("rows") == []))
    for r in _table_rows("conversations", tables.get("conversations", {"columns": [], "rows": []})):
        plan.conversations.append(_conversation(plan, r, encoded=True))
    for r in _table_rows("messages", tables.get("messages", {"columns": [], "rows": []})):
        content = r.json_value("content", "content", list, encoded=True)
        plan.messages.append(_message(r, r.text("conversation_id", "id"), r.integer("seq", lo=1),
                                      r.text("role", "name"), content, encoded=True))
    for r in _table_rows("summaries", tables.get("summaries", {"columns": [], "rows": []})):
        plan.summaries.append(_summary(r, encoded=True))
    for r in _table_rows("facts", tables.get("facts", {"columns": [], "rows": []})):
        plan.facts.append(_fact(plan, r, encoded=True))
    for r in _table_rows("memory_cursors", tables.get("memory_cursors",
                                                      {"columns": [], "rows": []})):
        plan.cursors.append((r.text("conversation_id", "id"), r.text("kind", "name", empty=False),
                             r.integer("seq")))


def _read_sessions(plan: ImportPlan, data: dict[str, Any]) -> None:
    """An export without ``tables`` (from the memory store): sessions, facts, summaries."""
    for key in ("sessions", "facts", "summaries"):
        if not isinstance(data.get(key, []), list):
            raise ImportRefused(f"refused to import: {key} must be a list; nothing was written")
    for i, s in enumerate(data.get("sessions", []), 1):
        if not isinstance(s, dict) or not isinstance(s.get("conversation"), dict) \
                or not isinstance(s.get("messages", []), list):
            raise ImportRefused(f"refused to import: session {i}: expected a conversation and "
                                "its messages; nothing was written")
        conv = _conversation(plan, _Row(f"session {i} conversation", s["conversation"]),
                             encoded=False)
        plan.conversations.append(conv)
        for j, m in enumerate(s.get("messages", []), 1):
            r = _Row(f"session {i} message {j}", m if isinstance(m, dict) else {})
            message = r.json_value("message", "content", dict, encoded=False)
            mr = _Row(f"session {i} message {j}", message)
            content = mr.json_value("content", "content", list, encoded=False)
            usage = r.json_value("usage", "meta", dict, encoded=False, default={}) or {}
            r = _Row(r.where, {**r.values, **{k: v for k, v in usage.items()}})
            plan.messages.append(_message(r, conv.id, r.integer("seq", lo=1),
                                          mr.text("role", "name"), content, encoded=False))
    for i, f in enumerate(data.get("facts", []), 1):
        plan.facts.append(_fact(plan, _Row(f"fact {i}", f if isinstance(f, dict) else {}),
                                encoded=False))
    for i, sm in enumerate(data.get("summaries", []), 1):
        plan.summaries.append(_summary(_Row(f"summary {i}", sm if isinstance(sm, dict) else {}),
                                       encoded=False))


# -- rows ----------------------------------------------------------------------------------------


def _conversation(plan: ImportPlan, r: _Row, *, encoded: bool) -> Conversation:
    owner = r.text("user_id", "id", optional=True)
    if owner != plan.user_id:
        raise r.refuse(f"the conversation belongs to {owner!r}, not to {plan.user_id!r}, "
                       "whose export this is")
    return r.model(lambda: Conversation(
        id=r.text("id", "id", empty=False), user_id=owner,
        title=r.text("title", "title", optional=True),
        persona=r.text("persona", "text", default=""), model=r.text("model", "name", default=""),
        created_at=r.number("created_at"), updated_at=r.number("updated_at"),
        last_seq=r.integer("last_seq"), meta=r.json_value("meta", "meta", dict, encoded=encoded,
                                                default="{}" if encoded else {}),
        name=_path_name(r, r.text("name", "id", optional=True)),
    ))


def _path_name(r: _Row, name: str | None) -> str:
    """The conversation's name (none or blank, as in an older export: the id), refused as the
    stores refuse it when a URL path cannot carry it (colloquy.text.require_name)."""
    if not name or is_blank(name):
        name = r.text("id", "id")
    try:
        return require_name(name)
    except InvalidTextError as e:
        raise r.refuse(str(e)) from None


def _message(r: _Row, conversation_id: str, seq: int, role: str, content: list[Any], *,
             encoded: bool) -> StoredMessage:
    # The entry rules, but for placement by role (messages.IMPORTED: an old export's rows).
    message: Message = r.model(lambda: Message.model_validate(
        {"role": role, "content": content}, context=IMPORTED))
    for block in message.content:
        images = [block] if isinstance(block, ImageBlock) else [
            b for b in (block.content if isinstance(block, ToolResultBlock)
                        and isinstance(block.content, list) else [])
            if isinstance(b, ImageBlock)]
        for image in images:
            _check_image(r, image)
    tokens = [r.integer(k, optional=True) for k in
              ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")]
    usage = None if all(t is None for t in tokens) else Usage(
        input_tokens=tokens[0] or 0, output_tokens=tokens[1] or 0,
        cache_write_tokens=tokens[2] or 0, cache_read_tokens=tokens[3] or 0)
    meta = r.json_value("meta", "meta", dict, encoded=encoded, default="{}" if encoded else {})
    key = meta.get(IDEMPOTENCY_KEY)
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= 255):
        raise r.refuse("meta.idempotency_key must be a string of 1-255 characters")
    return r.model(lambda: StoredMessage(
        conversation_id=conversation_id, seq=seq, message=message,
        created_at=r.number("created_at"), usage=usage,
        model=r.text("model", "name", optional=True), cost_usd=r.number("cost_usd", optional=True), meta=meta,
    ))


def _check_image(r: _Row, image: ImageBlock) -> None:
    src = image.source
    kind = src.get("type")
    if kind == "base64":
        if src.get("media_type") not in _IMAGE_TYPES or not isinstance(src.get("data"), str) \
                or set(src) != {"type", "media_type", "data"}:
            raise r.refuse("an image source of type base64 needs media_type "
                           f"({', '.join(sorted(_IMAGE_TYPES))}) and data, nothing else")
    elif kind == "url":
        if not isinstance(src.get("url"), str) or set(src) != {"type", "url"}:
            raise r.refuse("an image source of type url needs a url string, nothing else")
    else:
        raise r.refuse(f"an image source type must be base64 or url, not {kind!r}")


def _summary(r: _Row, *, encoded: bool) -> Summary:
    start, end = r.integer("start_seq", lo=1), r.integer("end_seq", lo=1)
    if end < start:
        raise r.refuse(f"end_seq {end} is before start_seq {start}")
    return r.model(lambda: Summary(
        id=r.text("id", "id", empty=False), conversation_id=r.text("conversation_id", "id"),
        start_seq=start, end_seq=end, text=r.text("text", "text"),
        model=r.text("model", "name", optional=True) or "",
        previous_id=r.text("previous_id", "id", optional=True), created_at=r.number("created_at"),
        meta=r.json_value("meta", "meta", dict, encoded=encoded, default="{}" if encoded else {}),
    ))


def _fact(plan: ImportPlan, r: _Row, *, encoded: bool) -> Fact:
    owner = r.text("user_id", "id")
    if owner != plan.user_id:
        raise r.refuse(f"the fact belongs to {owner!r}, not to {plan.user_id!r}, whose export "
                       "this is")
    origin = r.text("origin", "name", default="extracted")
    return r.model(lambda: Fact(
        id=r.text("id", "id", empty=False), user_id=owner,
        subject=r.text("subject", "name"),  # a blank one reads as "general" (Fact)
        statement=r.text("statement", "text"),  # a blank one is dropped by _drop_blank_facts
        source_conversation=r.text("source_conversation", "id", optional=True),
        source_seq=r.integer("source_seq", lo=1, optional=True),
        valid_from=r.number("valid_from"), valid_until=r.number("valid_until", optional=True),
        superseded_by=r.text("superseded_by", "id", optional=True), origin=origin,
        created_at=r.number("created_at"),
        meta=r.json_value("meta", "meta", dict, encoded=encoded, default="{}" if encoded else {}),
    ))


def _check_references(plan: ImportPlan) -> None:
    """Everything hangs off the file's own conversations, each id once, logs dense."""
    convs: dict[str, Conversation] = {}
    names: set[str] = set()
    for c in plan.conversations:
        if c.id in convs or c.name in names:
            raise ImportRefused(f"refused to import: conversation {c.id!r} ({c.name!r}) "
                                "appears twice; nothing was written")
        convs[c.id] = c
        names.add(c.name)
    seqs: dict[str, list[int]] = {cid: [] for cid in convs}
    keys: set[tuple[str, str]] = set()
    for m in plan.messages:
        where = f"message {m.seq} of conversation {m.conversation_id!r}"
        if m.conversation_id not in convs:
            raise ImportRefused(f"refused to import: {where}: no such conversation in the file "
                                "(another user's?); nothing was written")
        seqs[m.conversation_id].append(m.seq)
        key = m.meta.get(IDEMPOTENCY_KEY)
        if key is not None:
            if (m.conversation_id, key) in keys:
                raise ImportRefused(f"refused to import: {where}: idempotency key {key!r} "
                                    "used twice; nothing was written")
            keys.add((m.conversation_id, key))
    for cid, got in seqs.items():
        if sorted(got) != list(range(1, convs[cid].last_seq + 1)):
            raise ImportRefused(f"refused to import: conversation {cid!r}: its messages are not "
                                f"numbered 1..{convs[cid].last_seq} (last_seq); "
                                "nothing was written")
    for s in plan.summaries:
        if s.conversation_id not in convs or s.end_seq > convs[s.conversation_id].last_seq:
            raise ImportRefused(f"refused to import: summary {s.id!r}: it must cover messages "
                                "of a conversation in the file; nothing was written")
    for cid, kind, seq in plan.cursors:
        if cid not in convs or seq > convs[cid].last_seq:
            raise ImportRefused(f"refused to import: memory cursor {kind!r} of {cid!r}: it must "
                                "point into a conversation in the file; nothing was written")
    ids = [s.id for s in plan.summaries], [f.id for f in plan.facts]
    for kind, values in zip(("summary", "fact"), ids):
        if len(set(values)) != len(values):
            raise ImportRefused(f"refused to import: a {kind} id appears twice; "
                                "nothing was written")
    fact_ids = set(ids[1])
    for f in plan.facts:
        if f.superseded_by is not None and f.superseded_by not in fact_ids:
            raise ImportRefused(f"refused to import: fact {f.id!r}: superseded_by names a fact "
                                "not in the file; nothing was written")


def check_against_store(store: Store, plan: ImportPlan) -> None:
    """Refuse ids that exist here under another user (never overwritten or joined)."""
    for c in plan.conversations:
        found = store.find_conversation(c.id)
        if found is not None and found.user_id != plan.user_id:
            raise ImportRefused(f"refused to import: conversation {c.id!r} exists here and "
                                "belongs to another user; nothing was written")
    file_convs = {c.id for c in plan.conversations}
    get_fact = getattr(store, "get_fact", None)
    for f in plan.facts:
        src = f.source_conversation
        if src is not None and src not in file_convs:
            found = store.find_conversation(src)
            if found is not None and found.user_id != plan.user_id:
                raise ImportRefused(f"refused to import: fact {f.id!r}: its source conversation "
                                    f"{src!r} belongs to another user here; nothing was written")
        if callable(get_fact):
            there = get_fact(f.id)
            if there is not None and there.user_id != plan.user_id:
                raise ImportRefused(f"refused to import: fact id {f.id!r} exists here and "
                                    "belongs to another user; nothing was written")


# -- writing -------------------------------------------------------------------------------------


def write_plan(store: Store, plan: ImportPlan, conn: Any | None) -> None:
    """Write a validated plan: inside the caller's transaction ``conn`` (SQL stores), or
    through the Store interface when ``conn`` is None."""
    if conn is not None:
        _write_sql(store, plan, conn)
    else:
        _write_through_store(store, plan)


def _write_sql(store: Store, plan: ImportPlan, conn: Any) -> None:
    """Row for row (timestamps included), with the stores' own statements (queries.py)."""
    from .store import queries as Q

    dialect: Q.Dialect = store.dialect  # type: ignore[attr-defined]

    def run(sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        for args in rows:
            cur = conn.execute(dialect.q(sql), args)
            if cur.rowcount == 0:  # ON CONFLICT DO NOTHING: created meanwhile by someone else
                raise ImportRefused(f"refused to import: {args[0]!r} exists here already; "
                                    "nothing was written")

    run(Q.INSERT_CONVERSATION, [Q.conversation_row(c) for c in plan.conversations])
    run(Q.insert_messages_sql(1), [Q.message_row(
        m.conversation_id, m.seq, NewMessage(message=m.message, usage=m.usage, model=m.model,
                                             cost_usd=m.cost_usd, meta=m.meta), m.created_at)
        for m in plan.messages])
    run(Q.INSERT_SUMMARY, [Q.summary_row(s) for s in plan.summaries])
    run(Q.INSERT_FACT, [Q.fact_row(f) for f in plan.facts])  # the norm: from the statement
    run(Q.UPSERT_CURSOR, plan.cursors)


def _write_through_store(store: Store, plan: ImportPlan) -> None:
    """Any store, through its interface (new timestamps on conversations and messages)."""
    by_conv: dict[str, list[StoredMessage]] = {}
    for m in sorted(plan.messages, key=lambda m: m.seq):
        by_conv.setdefault(m.conversation_id, []).append(m)
    for c in plan.conversations:
        store.create_conversation(id=c.id, user_id=c.user_id, persona=c.persona, model=c.model,
                                  title=c.title, meta=c.meta, name=c.name)
        rows = [NewMessage(message=m.message, usage=m.usage, model=m.model, cost_usd=m.cost_usd,
                           meta=m.meta) for m in by_conv.get(c.id, [])]
        if rows:
            store.append(c.id, rows)
    for s in plan.summaries:
        store.save_summary(s)
    for f in plan.facts:
        store.add_fact(f)
    for cid, kind, seq in plan.cursors:
        store.set_memory_cursor(cid, kind, seq)
