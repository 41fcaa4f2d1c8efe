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

#: colloquy's own stop reasons, beside the providers': a guard answered the message (no model
#: call), and a reply cut short because its caller went away (colloquy.effects: the text so far
#: is kept, its usage billed).
GUARD = "guard"
CANCELLED = "cancelled"

#: Stop reasons after which a reply's tool calls are run (or it has none): the model finished
#: its turn, or asked for its calls; None when the provider did not say.
_RUNS = frozenset({"end_turn", "tool_use"})

#: Stop reasons after which a reply's tool calls are never run, and why (said in Reply.notes
#: and in the is_error tool_result stored for each call). max_tokens and
#: model_context_window_exceeded: the reply was cut, so a tool_use's input may be incomplete
#: (its defaults would fill the gap); stop_sequence: the same, at a stop sequence; refusal: the
#: provider stopped the reply for safety. The turn ends; the user can ask again (or raise
#: max_tokens). Held too: pause_turn past the turn's rounds (Anthropic paused a long server-tool
#: turn; a pause within them goes on: _locked_turn), and a stop reason colloquy does not know (a
#: provider's newer one), named in the note.
NOT_RUN: dict[str, str] = {
    "max_tokens": "the reply was cut off by max_tokens before it was complete",
    "model_context_window_exceeded": "the reply was cut off when the model's context window "
                                     "filled up (stop_reason model_context_window_exceeded)",
    "stop_sequence": "the reply stopped at a stop sequence and may be incomplete",
    "refusal": "the model refused to go on (stop_reason refusal)",
}
_PAUSED = ("the provider paused the turn (stop_reason pause_turn) more times than the turn's "
           "tool rounds allow; send a new message to go on")


def not_run_reason(stop_reason: str | None) -> str | None:
    """Why a reply with this stop_reason ends the turn without running its tool calls, or None
    when its tool calls may run (tool_use, end_turn, or a stop reason the provider did not
    give)."""
    if stop_reason is None or stop_reason in _RUNS:
        return None
    if stop_reason == "pause_turn":
        return _PAUSED
    return NOT_RUN.get(stop_reason) or (
        f"the reply stopped with stop_reason {stop_reason!r}, which colloquy does not know")


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
