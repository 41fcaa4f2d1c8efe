"""What one turn returns (:class:`Reply`), and the stop reasons that end a turn without
running its tool calls.

Apart from colloquy.chat so that the modules that only read a turn's outcome (the server's
schemas, the compatible routes, continuity) need not know the engine, and chat.py stays one
concept: the turn.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .messages import Message
from .usage import Usage

#: Stop reasons after which a reply's tool calls are never run, and why (said in Reply.notes
#: and in the is_error tool_result stored for each call). max_tokens: the reply was cut, so a
#: tool_use's input may be incomplete (its defaults would fill the gap); stop_sequence: the
#: same, at a stop sequence; refusal: the provider stopped the reply for safety. The turn ends;
#: the user can ask again (or raise max_tokens). (pause_turn is not here: Anthropic paused a
#: long server-tool turn, whose blocks colloquy keeps whole, so the turn goes on: _locked_turn.)
NOT_RUN: dict[str, str] = {
    "max_tokens": "the reply was cut off by max_tokens before it was complete",
    "stop_sequence": "the reply stopped at a stop sequence and may be incomplete",
    "refusal": "the model refused to go on (stop_reason refusal)",
}


def not_run_reason(stop_reason: str | None) -> str | None:
    """Why a reply with this stop_reason ends the turn without running its tool calls, or None
    when its tool calls may run (tool_use, end_turn, or a stop reason the provider did not give)."""
    return NOT_RUN.get(stop_reason or "")


class Reply(BaseModel):
    """The outcome of one turn."""

    model_config = ConfigDict(frozen=True)
    text: str
    message: Message
    conversation_id: str
    #: Sequence number of the final assistant message in the log.
    seq: int
    #: Summed over every model call of the turn (tool rounds included).
    usage: Usage
    cost_usd: float | None
    model: str
    stop_reason: str | None
    #: Model calls made (1 + tool rounds).
    rounds: int = 1
    #: Repairs and policy warnings, for display.
    notes: list[str] = Field(default_factory=list)
    #: Guard verdicts of this turn that were not a plain allow (see colloquy.guards).
    guards: list[dict[str, Any]] = Field(default_factory=list)
    #: True when an input guard blocked the turn: ``text`` is the guard's message, no model call.
    blocked: bool = False
