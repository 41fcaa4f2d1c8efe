"""What the two compatible routes (OpenAI's chat completions, Anthropic's Messages) share.

Clients of both APIs send the whole conversation every time. colloquy owns the conversation
instead, so a request is split here into the history the client *replays* and the *new* user
message of this turn: only the new message is stored and answered; the history serves to find
the conversation when the client names none (``ChatService.conversation_by_history``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Header

from pydantic import ValidationError

from ..messages import ContentBlock, Message, ToolResultBlock
from ..models import ToolChoice, ToolSpec
from ..text import clean, is_blank
from .errors import InvalidRequest
from .schemas import _ID_PATTERN, ErrorBody

#: The request header naming the conversation on both compatible routes (and answered back).
CONVERSATION_HEADER = "X-Colloquy-Conversation"
ConversationHeader = Annotated[str | None, Header(
    alias=CONVERSATION_HEADER, max_length=128,
    description="the conversation's name (created on first use); none: found by the history")]


_NAME = re.compile(_ID_PATTERN)


def client_name(*sources: tuple[str, Any]) -> str | None:
    """The conversation a compatible request names: the first of ``sources`` (where the name
    may be: ``(param, value)``, in order of precedence) that holds one. A blank value (empty,
    spaces, U+200B: :func:`colloquy.text.is_blank`) or one that is not a string names none,
    on every source alike: an HTTP server already strips a header of spaces to nothing, and
    ``""`` was never a name. A name outside the rule is a 400 naming its source."""
    for param, value in sources:
        if not isinstance(value, str) or is_blank(clean(value)):
            continue
        if not _NAME.match(value):
            raise InvalidRequest(f"{param}: conversation names are 1-128 characters: letters, "
                                 "digits, '_', '.', ':', '@', '-'", param=param)
        return value
    return None


def turn_responses(answer: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a compatible turn route; ``answer`` describes its 200."""
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody} for status in (400, 404, 409, 422, 502, 503)}
    return {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                  "description": answer}, **errors}


def ignored_note(extra: dict[str, Any] | None) -> list[str]:
    """A note naming the request's fields colloquy accepts but does not act on
    (``response_format``, ``top_p``...: the body's extra fields), so a client that relies on one
    can see it was not honoured; none when there are none."""
    names = sorted(k for k, v in (extra or {}).items() if v is not None)
    if not names:
        return []
    return [f"not acted on by colloquy (accepted and ignored): {', '.join(names)}"]


def tool_choice(raw: Any, tools: Sequence[ToolSpec], *, openai: bool = False,
                parallel_tool_calls: bool | None = None) -> ToolChoice | None:
    """The request's ``tool_choice`` in colloquy's shape (:class:`ToolChoice`), from the
    Messages API's object or, with ``openai``, chat completions' value and
    ``parallel_tool_calls`` (alone: ``auto`` with it; dropped without tools, where it means
    nothing). A 400 naming the field for another shape, a tool_choice without ``tools``
    (both APIs refuse one) or one naming a tool not among them."""
    if raw is None:
        if openai and parallel_tool_calls is not None and tools:
            return ToolChoice(type="auto", disable_parallel_tool_use=not parallel_tool_calls)
        return None
    try:
        choice = ToolChoice.from_openai(raw, parallel_tool_calls) if openai \
            else ToolChoice.model_validate(raw)
    except (ValueError, ValidationError) as e:
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise InvalidRequest(f"tool_choice: {detail}", param="tool_choice") from None
    if not tools:
        raise InvalidRequest("tool_choice is only allowed when tools are given",
                             param="tool_choice")
    if choice.type == "tool" and choice.name not in {t.name for t in tools}:
        param = "tool_choice.function.name" if openai else "tool_choice.name"
        raise InvalidRequest(f"{param}: {choice.name!r} is not among the request's tools",
                             param=param)
    return choice


def split_turn(messages: Sequence[Message]) -> tuple[list[Message], Message]:
    """(the replayed history, the new user message): the user messages after the last
    assistant message, joined into one message, tool results first (both APIs want a tool
    result right after the call it answers). :class:`InvalidRequest` when the request does
    not end with the user's turn (a prefilled assistant message is not stored by colloquy)."""
    start = len(messages)
    while start > 0 and messages[start - 1].role == "user":
        start -= 1
    if start == len(messages):
        raise InvalidRequest("the last message must be the user's new message (or the results "
                             "of the tool calls the model asked for)", param="messages")
    blocks: list[ContentBlock] = [b for m in messages[start:] for b in m.content]
    blocks.sort(key=lambda b: not isinstance(b, ToolResultBlock))  # stable: order kept
    return list(messages[:start]), Message(role="user", content=blocks)


__all__ = ["CONVERSATION_HEADER", "ConversationHeader", "client_name", "ignored_note",
           "split_turn", "tool_choice", "turn_responses"]
