"""What the model saw: a compact record of each reply's context, and that record shown again.

At turn time the engine (:class:`colloquy.Chat`) stores, in the meta of every reply a model
call produced, a small record of the context that call was sent (:func:`record`, under the meta
key ``context``)::

    {"v": 2,
     "kept": "1+13,3+3",                         # seqs sent verbatim: 1-14 and 17-20
     "persona": {"tokens": 40, "sha256": "3fa2b1c09d1e4f27"},
     "parts": {"facts": {"tokens": 120, "records": ["f_..."]},
               "summary": {"tokens": 300, "records": ["s_..."], "seqs": "1+9"},
               "recall": {"tokens": 200, "seqs": "3+1,40,2+1"}},
     "tokens": {"messages": 1200, "tools": 0, "total": 1860}}

Seq ranges are one string (:func:`encode`): comma-separated ranges, oldest first, each written
as its first seq's distance from the previous range's last seq (from 0 for the first), then
``+`` and its length minus one when it holds more than one seq: ``"3+1,40,2+1"`` is 3-4, 44,
46-47. A range costs a few characters whatever the conversation's length (the distances, not
the seqs, are written), and an empty list is left out. Records stored before (``"v": 1``) hold
``[[first, last], ...]`` lists instead: :func:`spans` reads both, so they show as they did.

References, not copies: its size follows the context's shape (a few ranges and ids), not the
log's length or the texts' sizes, so a turn's cost stays flat (bench/turns.py). Token counts are
the engine's calibrated estimates per part (colloquy.tokens); the billed total is the reply's
usage.

:func:`seen` resolves a stored record into what is shown ("what the model saw", the page's
context panel and ``GET /v1/conversations/{id}/messages/{seq}/context``): the persona, the facts
(by id: a fact forgotten since is reported as forgotten, never resurrected), the summary (by id),
the recalled and kept messages (from the append-only log, so they read as they were sent, before
any per-request shortening such as tool-output pruning), the token counts and the cost split
into fresh input, cache writes, cache reads and output. Records survive the log growing, facts
changing and the persona changing (the hash says whether it still matches).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

from pydantic import BaseModel, Field

from ..caches import text_memo
from ..errors import NoContextRecord
from ..messages import StoredMessage
from ..tokens import TokenCounter, estimate_text, estimate_tools
from ..usage import Usage, price_for, priced
from .base import Context

#: Meta key of a reply's context record.
CONTEXT = "context"
VERSION = 2


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted seqs as inclusive ``[first, last]`` ranges: ``[1, 2, 3, 7]`` -> ``[[1, 3], [7, 7]]``."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def encode(spans: Sequence[Sequence[int]]) -> str:
    """``ranges`` output as the record's compact string (module docstring):
    ``[[1, 14], [17, 20]]`` -> ``"1+13,3+3"``."""
    out: list[str] = []
    last = 0
    for lo, hi in spans:
        out.append(f"{lo - last}+{hi - lo}" if hi != lo else str(lo - last))
        last = hi
    return ",".join(out)


def spans(value: Any) -> list[list[int]]:
    """The ``[first, last]`` ranges of a stored record's field: the compact string
    (:func:`encode`) or a list of ranges (records stored before, ``"v": 1``). A piece that
    does not parse (a hand-edited import) is skipped, never an error: a stored record is shown."""
    out: list[list[int]] = []
    if isinstance(value, str):
        last = 0
        for item in value.split(","):
            start, _, length = item.partition("+")
            try:
                lo = last + int(start)
                hi = lo + (int(length) if length else 0)
            except ValueError:
                continue
            out.append([lo, hi])
            last = hi
    elif isinstance(value, list):
        for pair in value:
            try:
                lo, hi = (int(x) for x in pair)
            except (TypeError, ValueError):
                continue
            out.append([lo, hi])
    return out


def expand(value: Any) -> list[int]:
    """The seqs of ``ranges`` output, or of a stored record's field (:func:`spans`)."""
    return [s for lo, hi in spans(value) for s in range(lo, hi + 1)]


def persona_hash(persona: str) -> str:
    return hashlib.sha256(persona.encode("utf-8", "surrogatepass")).hexdigest()[:16]


_PERSONA_MEMO: dict[str, tuple[str, int]] = {}
_FORGETS = text_memo(_PERSONA_MEMO.clear)  # a persona is a user's text: a deletion empties it


def _persona(persona: str) -> tuple[str, int]:
    """(hash, raw tokens) of a persona, memoised: the persona rarely changes between turns."""
    hit = _PERSONA_MEMO.get(persona)
    if hit is None:
        if len(_PERSONA_MEMO) > 64:
            _PERSONA_MEMO.clear()
        hit = _PERSONA_MEMO[persona] = (persona_hash(persona), estimate_text(persona))
    return hit


def record(ctx: Context, persona: str, *, model: str, counter: TokenCounter, raw_total: int,
           tools: Sequence[Any] = ()) -> dict[str, Any]:
    """The compact record of the context one model call was sent (see the module docstring).

    ``ctx``: the built context (its ``sources``, ``part_sources``, ``part_tokens``,
    ``part_records``); ``persona``: the system prompt before any part; ``raw_total``: the
    uncalibrated estimate of the whole request, as the engine computed it for calibration."""
    factor = counter.factor(model)
    sha, persona_raw = _persona(persona)
    persona_tokens = math.ceil(persona_raw * factor)
    parts: dict[str, Any] = {}
    for name in {*ctx.part_sources, *ctx.part_tokens, *ctx.part_records}:
        part: dict[str, Any] = {"tokens": int(ctx.part_tokens.get(name, 0))}
        if ctx.part_records.get(name):
            part["records"] = list(ctx.part_records[name])
        if ctx.part_sources.get(name):
            part["seqs"] = encode(ranges(ctx.part_sources[name]))
        parts[name] = part
    tools_tokens = math.ceil(estimate_tools(tools) * factor) if tools else 0
    total = math.ceil(raw_total * factor)
    used = persona_tokens + tools_tokens + sum(p["tokens"] for p in parts.values())
    return {
        "v": VERSION,
        "kept": encode(ranges(chain.from_iterable(ctx.sources))),
        "persona": {"tokens": persona_tokens, "sha256": sha},
        "parts": parts,
        "tokens": {"messages": max(0, total - used), "tools": tools_tokens, "total": total},
    }


# -- shown again ----------------------------------------------------------------------------------


class SeenMessage(BaseModel):
    seq: int
    role: str
    text: str
    #: Content blocks in the Anthropic shape.
    content: list[dict[str, Any]]


class SeenFact(BaseModel):
    id: str
    subject: str | None = None
    statement: str | None = None
    #: False when the fact was forgotten after this reply (its text is no longer held).
    held: bool = True


class SeenPart(BaseModel):
    """One contributor to the context besides the persona: facts, summary, recalled excerpts."""

    name: str
    #: Calibrated estimate, tokens.
    tokens: int
    #: Stored messages the part stands for (a summary's range, the recalled turns).
    seqs: list[int] = Field(default_factory=list)
    facts: list[SeenFact] = Field(default_factory=list)
    #: The summary's text (summary parts).
    summary: str | None = None
    #: The recalled messages (recall parts).
    messages: list[SeenMessage] = Field(default_factory=list)


class CostSplit(BaseModel):
    """A reply's tokens and dollars by kind (USD at the model's base rates; ``None`` when its
    price is unknown). ``input`` is the fresh, uncached input."""

    input_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    output_tokens: int
    input_usd: float | None = None
    cache_write_usd: float | None = None
    cache_read_usd: float | None = None
    output_usd: float | None = None
    #: What the reply was billed, as stored with it.
    total_usd: float | None = None
    #: True when the provider reported no usage and these counts are colloquy's estimate.
    estimated: bool = False


class SeenContext(BaseModel):
    """What the model was sent for one reply, from the record stored with it."""

    conversation_id: str
    #: The reply.
    seq: int
    model: str | None
    persona: str
    #: False when the conversation's persona changed after this reply (``persona`` is today's).
    persona_unchanged: bool
    persona_tokens: int
    parts: list[SeenPart]
    #: The stored messages sent verbatim, oldest first.
    messages: list[SeenMessage]
    messages_tokens: int
    tools_tokens: int
    #: Calibrated estimate of the whole request, tokens.
    estimated_input_tokens: int
    usage: Usage | None
    cost: CostSplit | None


def _seen_message(sm: StoredMessage) -> SeenMessage:
    return SeenMessage(seq=sm.seq, role=sm.role, text=sm.message.text,
                       content=[b.model_dump(mode="json", exclude_none=True) for b in sm.message.content])


def cost_split(model: str | None, usage: Usage | None, total: float | None) -> CostSplit | None:
    """``usage`` priced kind by kind at ``model``'s base rates (colloquy.usage.price_for); no
    figure for a call that reported no usage (its cost is unknown, never $0)."""
    if usage is None:
        return None
    price = price_for(model) if usage.reported else None

    def usd(tokens: int, rate: float | None) -> float | None:
        return None if rate is None else tokens * rate / 1_000_000

    return CostSplit(
        input_tokens=usage.input_tokens, cache_write_tokens=usage.cache_write_tokens,
        cache_read_tokens=usage.cache_read_tokens, output_tokens=usage.output_tokens,
        input_usd=usd(usage.input_tokens, price.input if price else None),
        cache_write_usd=usd(usage.cache_write_tokens, price.cache_write if price else None),
        cache_read_usd=usd(usage.cache_read_tokens, price.cache_read if price else None),
        output_usd=usd(usage.output_tokens, price.output if price else None),
        total_usd=total, estimated=bool(getattr(usage, "estimated", False)),
    )


def seen(store: Any, conversation_id: str, seq: int,
         log: Sequence[StoredMessage] | None = None) -> SeenContext:
    """The context reply ``seq`` of a conversation was sent, resolved from its stored record.

    ``log``: the conversation's log if the caller holds it (else it is loaded). Raises
    :class:`NoContextRecord` when ``seq`` is not a reply with a record,
    :class:`colloquy.errors.ConversationNotFound` for an unknown conversation."""
    conv = store.get_conversation(conversation_id)
    messages = list(log) if log is not None else store.load(conversation_id)
    by_seq = {sm.seq: sm for sm in messages}
    reply = by_seq.get(seq)
    rec = reply.meta.get(CONTEXT) if reply is not None else None
    if reply is None or reply.role != "assistant" or not isinstance(rec, dict):
        raise NoContextRecord(conversation_id, seq)
    top = max(by_seq, default=0)

    def held(value: Any) -> list[int]:  # a record's seqs, up to the log's last (never past it)
        return [s for lo, hi in spans(value) for s in range(max(lo, 1), min(hi, top) + 1)]

    parts: list[SeenPart] = []
    for name, p in (rec.get("parts") or {}).items():
        part = SeenPart(name=name, tokens=int(p.get("tokens", 0)), seqs=held(p.get("seqs")))
        for rid in map(str, p.get("records", [])):
            if rid.startswith("f_"):  # a fact (colloquy.memory.records ids: f_..., s_...)
                fact = store.get_fact(rid) if hasattr(store, "get_fact") else None
                if fact is not None and fact.user_id == conv.user_id:
                    part.facts.append(SeenFact(id=rid, subject=fact.subject, statement=fact.statement))
                else:
                    part.facts.append(SeenFact(id=rid, held=False))
            elif rid.startswith("s_") and hasattr(store, "list_summaries"):
                found = [s for s in store.list_summaries(conversation_id) if s.id == rid]
                if found:
                    part.summary = found[0].text
        if name != "summary":
            part.messages = [_seen_message(by_seq[s]) for s in part.seqs if s in by_seq]
        parts.append(part)
    kept = [_seen_message(by_seq[s]) for s in held(rec.get("kept")) if s in by_seq]
    persona = rec.get("persona") or {}
    tokens = rec.get("tokens") or {}
    return SeenContext(
        conversation_id=conversation_id, seq=seq, model=reply.model,
        persona=conv.persona, persona_unchanged=persona.get("sha256") == persona_hash(conv.persona),
        persona_tokens=int(persona.get("tokens", 0)), parts=parts, messages=kept,
        messages_tokens=int(tokens.get("messages", 0)), tools_tokens=int(tokens.get("tools", 0)),
        estimated_input_tokens=int(tokens.get("total", 0)), usage=reply.usage,
        cost=cost_split(reply.model, reply.usage, priced(reply.model, reply.usage, reply.cost_usd)),
    )


__all__ = ["CONTEXT", "CostSplit", "NoContextRecord", "SeenContext", "SeenFact", "SeenMessage",
           "SeenPart", "cost_split", "encode", "expand", "persona_hash", "ranges", "record", "seen",
           "spans"]
