"""The guards around one turn (colloquy.guards run by the engine): the input guards on the
user's message, the stored answer of a blocked turn, the output guards on the final reply.

Apart from colloquy.chat so that chat.py stays the turn itself; these are its steps that only
a chat with guards takes. A guard's own model calls (a topic judge) are billed to the session
like every side call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .guards import GuardContext, GuardOutcome, Stage, replace_text
from .messages import Message
from .models import ModelResponse
from .reply import GUARD, Reply
from .store import NewMessage
from .telemetry import call_purpose
from .usage import Usage

if TYPE_CHECKING:
    from .chat import Chat


def run_guards(chat: Chat, stage: Stage, text: str) -> GuardOutcome:
    """The chat's guards of ``stage`` on ``text`` (nothing runs, and no context is built, for
    a stage without guards: the common case, every turn)."""
    if not chat.guards.stage(stage):
        return GuardOutcome(text=text)
    ctx = GuardContext(
        stage=stage, system=chat.system, conversation_id=chat.session_id,
        user_id=chat.user_id, recent=chat._branch.visible(chat._log)[-6:], model=chat.model,
    )
    with call_purpose("guard"):  # e.g. a topic guard's judge
        outcome = chat.guards.run(stage, text, ctx)
    for model, usage in list(ctx.calls):  # e.g. a topic judge: a cheap model, billed too
        if usage is not None:
            chat.record_side_call("guard", model.name, usage, model.cost(usage))
    return outcome


def blocked_turn(
    chat: Chat, message: Message, checked: GuardOutcome, extra_meta: dict[str, Any] | None = None
) -> Reply:
    """Store a blocked turn (the user's message and the guard's answer, both carrying the
    verdict) and answer with the guard's message; the model is not called."""
    assert checked.blocked is not None
    text = checked.blocked.message or ""
    meta = checked.meta()
    _, answer = chat._append(
        NewMessage(message=message, meta={**meta, **(extra_meta or {})}),  # a retry replays
        NewMessage(message=Message.assistant(text), meta={**meta, "stop_reason": GUARD}),
    )
    return Reply(
        text=text, message=answer.message, conversation_id=chat.session_id, seq=answer.seq,
        usage=Usage(), cost_usd=0.0, model=chat.model.name, stop_reason=GUARD, rounds=0,
        notes=[f"blocked by guard {checked.blocked.guard!r}: {checked.blocked.reason}"],
        guards=[v.record() for v in checked.verdicts], blocked=True,
    )


def guard_reply(
    chat: Chat, response: ModelResponse, row: NewMessage
) -> tuple[ModelResponse, NewMessage, GuardOutcome]:
    """Run the output guards on the final reply; a rewrite or block replaces its text (the
    reply stays in the context: the user's message was fine, the model sees its answer)."""
    checked = run_guards(chat, "output", response.text)
    if not checked.verdicts:
        return response, row, checked
    text = (checked.blocked.message or "") if checked.blocked is not None else checked.text
    response = response.model_copy(update={"content": replace_text(response.message, text).content})
    meta = {**row.meta, **checked.meta()}
    if checked.blocked is not None:
        meta.pop("blocked", None)
        meta["output_blocked"] = True
    # A NewMessage validated (its meta through the text rules): an append returns what it gets.
    row = NewMessage(message=response.message, usage=row.usage, model=row.model,
                     cost_usd=row.cost_usd, meta=meta)
    return response, row, checked
