"""What a session cost: its turns and its side calls (summaries, fact extraction, titles, guard
judges), in tokens and USD.

A turn's usage and price are stored with its reply; a side call's are added up in the
conversation record's meta, one entry per purpose and model (:data:`SIDE_CALLS`), so the record
stays small however many calls a long session makes. :meth:`colloquy.Chat.cost` reads both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from .messages import StoredMessage
from .store import Conversation
from .usage import Usage, add_costs, priced

#: Conversation meta key of the side calls' running totals (see :func:`with_side_call`).
SIDE_CALLS = "side_calls"


class TurnCost(BaseModel):
    """One model call of a turn: the stored reply's sequence number, model, usage and price."""

    seq: int
    model: str | None
    usage: Usage
    cost_usd: float | None


class SideCost(BaseModel):
    """Model calls a session made besides its turns (summaries, fact extraction, titles), per
    purpose and model: they are billed too, usually by a cheaper model."""

    purpose: str
    model: str
    calls: int
    usage: Usage
    cost_usd: float | None


class SessionCost(BaseModel):
    turns: list[TurnCost]
    side_calls: list[SideCost] = Field(default_factory=list)
    #: Turns and side calls together.
    usage: Usage
    #: Turns and side calls together; None when a call used a model whose price is unknown.
    cost_usd: float | None


def side_calls_of(conversation: Conversation | None) -> list[SideCost]:
    """The side calls billed to a conversation so far (see :meth:`Chat.record_side_call`)."""
    table = (conversation.meta if conversation is not None else {}).get(SIDE_CALLS) or {}
    return [SideCost.model_validate(v) for v in table.values()]


def session_cost(log: Iterable[StoredMessage], conversation: Conversation | None) -> SessionCost:
    """Tokens and dollars per model call (the stored replies of ``log``, priced by
    genai-prices where a reply has no stored price) and the conversation's side calls."""
    turns = [TurnCost(seq=sm.seq, model=sm.model, usage=sm.usage, cost_usd=stored_cost(sm))
             for sm in log if sm.usage is not None]
    side = side_calls_of(conversation)
    return SessionCost(
        turns=turns, side_calls=side,
        usage=Usage.total([*(t.usage for t in turns), *(s.usage for s in side)]),
        cost_usd=add_costs([*(t.cost_usd for t in turns), *(s.cost_usd for s in side)]),
    )


def stored_cost(sm: StoredMessage) -> float | None:
    """One stored model call's dollars (colloquy.usage.priced): None when unknown."""
    return priced(sm.model, sm.usage, sm.cost_usd)


def with_side_call(meta: dict[str, Any], purpose: str, model: str, usage: Usage,
                   cost_usd: float | None) -> dict[str, Any]:
    """A conversation's ``meta`` with one more side call added to its purpose and model's
    entry (a new dict; ``meta`` is not changed). A call that reported no usage has an
    unknown cost, whatever ``cost_usd`` says (see :func:`stored_cost`)."""
    if not usage.reported:
        cost_usd = None
    table = dict(meta.get(SIDE_CALLS) or {})
    key = f"{purpose} {model}"
    old = table.get(key)
    if old is None:
        entry = SideCost(purpose=purpose, model=model, calls=1, usage=usage, cost_usd=cost_usd)
    else:
        prev = SideCost.model_validate(old)
        entry = SideCost(
            purpose=purpose, model=model, calls=prev.calls + 1, usage=prev.usage + usage,
            cost_usd=add_costs([prev.cost_usd, cost_usd]))
    table[key] = entry.model_dump(mode="json")
    return {**meta, SIDE_CALLS: table}


def derived_side_call(record: Any) -> tuple[str, str, Usage, float | None] | None:
    """(purpose, model, usage, cost) of a record a policy derived with a model call (a summary,
    facts), from its meta; None when it made none."""
    meta = getattr(record, "meta", None) or {}
    if not (isinstance(meta, dict) and meta.get("usage")):
        return None
    return (str(getattr(record, "purpose", "") or type(record).__name__.lower()),
            str(getattr(record, "model", "") or "unknown"),
            Usage.model_validate(meta["usage"]), meta.get("cost_usd"))


__all__ = ["SIDE_CALLS", "SessionCost", "SideCost", "TurnCost", "derived_side_call",
           "session_cost", "side_calls_of", "stored_cost", "with_side_call"]
