"""What a model call is for, carried to the model layer without touching every call site.

The model layer instruments every call in one place (:mod:`colloquy.telemetry.genai`), but only
the callers know *why* a call is made (a turn, a summary, fact extraction, a title, a guard's
judge) and for which conversation. They say so with :func:`call_purpose`; the value travels in a
context variable, so it reaches the call however deep it is made, and in whichever thread the
caller's context was copied to.

:func:`isolated` runs a generator in a private copy of the caller's context: the turn keeps its
span current across the deltas it yields, and the caller never sees it (a generator otherwise
shares its consumer's context, and an abandoned one would leave its span attached there).
"""

from __future__ import annotations

import contextvars
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

#: The purposes colloquy's own calls declare (the ``colloquy.purpose`` span attribute and the
#: ``purpose`` metric label); calls made outside any of them are ``other``.
PURPOSES = ("turn", "summary", "extraction", "title", "guard", "eval", "other")

_purpose: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "colloquy_call_purpose", default=None)
_conversation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "colloquy_conversation_id", default=None)

Y = TypeVar("Y")
R = TypeVar("R")
S = TypeVar("S")


@contextmanager
def call_purpose(purpose: str, conversation_id: str | None = None) -> Iterator[None]:
    """Model calls made inside are for ``purpose`` (one of :data:`PURPOSES`) and, when given,
    for conversation ``conversation_id`` (else the enclosing one's). Use around synchronous
    code or inside an :func:`isolated` generator: a plain generator that yields inside would
    leak the value to its consumer."""
    token = _purpose.set(purpose)
    conv = _conversation.set(conversation_id) if conversation_id is not None else None
    try:
        yield
    finally:
        if conv is not None:
            _conversation.reset(conv)
        _purpose.reset(token)


@contextmanager
def conversation(conversation_id: str) -> Iterator[None]:
    """Model calls made inside belong to ``conversation_id`` (``gen_ai.conversation.id``)."""
    token = _conversation.set(conversation_id)
    try:
        yield
    finally:
        _conversation.reset(token)


def current_purpose() -> str:
    """The declared purpose of a call made now (``other`` when none was declared)."""
    return _purpose.get() or "other"


def current_conversation() -> str | None:
    """The conversation a call made now belongs to, if a caller said."""
    return _conversation.get()


def isolated(gen: Generator[Y, S, R]) -> Generator[Y, S, R]:
    """Run ``gen`` step by step in a private copy of the current context: what it sets (the
    current span, :func:`call_purpose`) stays inside, even across its yields, and its cleanup
    (``close``) runs in that context too. Its steps may run in different threads one after
    the other (never two at once, as with any generator). Values sent and exceptions thrown
    in go through to ``gen`` (the turn's effects, colloquy.effects, are answered that way)."""
    ctx = contextvars.copy_context()
    sent: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                item = ctx.run(gen.throw, error) if error is not None else ctx.run(gen.send, sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            sent, error = None, None
            try:
                sent = yield item
            except GeneratorExit:
                raise
            except BaseException as e:  # noqa: BLE001 - thrown on into gen
                error = e
    finally:
        ctx.run(gen.close)
