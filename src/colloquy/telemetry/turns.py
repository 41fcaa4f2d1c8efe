"""The turn span and the work it groups: context building, the store, the turn lock, tools.

A turn is the conventions' agent invocation: span ``invoke_agent colloquy`` (kind INTERNAL,
``gen_ai.operation.name`` = ``invoke_agent``, ``gen_ai.agent.name`` = ``colloquy``), with
``gen_ai.conversation.id``, ``gen_ai.provider.name``, ``gen_ai.request.model``, the turn's
summed ``gen_ai.usage.*`` and ``colloquy.cost_usd``, ``colloquy.turn.rounds`` and
``colloquy.turn.outcome``. Its children, in order of a tool-using turn:

    colloquy.turn_lock          waiting for the conversation (other turns, other processes)
    colloquy.store.load         reading what is new in the log
    colloquy.store.append       the user's message
    colloquy.context            the policy: colloquy.context.policy, .input_tokens (estimated
                                tokens kept), .messages, .history_messages, .parts (parts used
                                by a composite policy), .cache_breakpoints
      chat offline-summariser   a summary written for this turn (colloquy.purpose=summary)
    chat claude-sonnet-4-6      the model call (colloquy.purpose=turn)
    colloquy.store.append       the tool call
    execute_tool get_weather    gen_ai.tool.name, gen_ai.tool.call.id, gen_ai.tool.type
    ...                         (more rounds)
    chat claude-haiku-4-5       the title (purpose=title), a fact extraction (extraction),
                                a topic guard's judge (guard)

These helpers are used inside the turn's :func:`~colloquy.telemetry.context.isolated`
generator, so the turn span stays current there and never leaks to the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..usage import Usage
from . import events
from .genai import capturing_content, error_type, tracer, tracing

AGENT = "colloquy"


class TurnScope:
    """What the engine tells the turn span as the turn goes (see :func:`turn_span`)."""

    def __init__(self, span: Span, start: float) -> None:
        self.span = span
        self.start = start
        self.first_token: float | None = None
        self.outcome = "ok"

    def delta(self) -> None:
        """A text delta reached the caller (the first one sets the time to first token)."""
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.start

    def finished(self, *, usage: Usage, cost_usd: float | None, rounds: int,
                 outcome: str = "ok") -> None:
        self.outcome = outcome
        if not self.span.is_recording():
            return
        attrs: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
            "colloquy.turn.rounds": rounds,
        }
        if cost_usd is not None:
            attrs["colloquy.cost_usd"] = cost_usd
        self.span.set_attributes(attrs)


@contextmanager
def turn_span(conversation_id: str, model: Any, streaming: bool) -> Iterator[TurnScope]:
    """The span of one turn, current inside; listeners get TurnStarted / TurnEnded."""
    name = str(getattr(model, "name", ""))
    recording = tracing()  # else no span is made (see tracing)
    span = tracer.start_span(f"invoke_agent {AGENT}", kind=SpanKind.INTERNAL, attributes={
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": AGENT,
        "gen_ai.provider.name": str(getattr(model, "provider", "unknown")),
        "gen_ai.request.model": name,
        "gen_ai.conversation.id": conversation_id,
        "colloquy.turn.streaming": streaming,
    }) if recording else trace.INVALID_SPAN
    scope = TurnScope(span, time.perf_counter())
    listening = events.listening()
    if listening:
        events.emit("turn_started", events.TurnStarted(conversation_id, name, streaming))
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False,
                            set_status_on_exception=False) if recording else nullcontext():
            yield scope
    except BaseException as e:
        scope.outcome = error_type(e)
        span.set_attribute("error.type", scope.outcome)
        if not isinstance(e, GeneratorExit):
            span.record_exception(e)
        span.set_status(Status(StatusCode.ERROR, scope.outcome))
        raise
    finally:
        span.set_attribute("colloquy.turn.outcome", scope.outcome)
        span.end()
        if listening:
            events.emit("turn_ended", events.TurnEnded(
                conversation_id=conversation_id, model=name, streaming=streaming,
                duration=time.perf_counter() - scope.start,
                time_to_first_token=scope.first_token, outcome=scope.outcome))


_NO_SPAN = nullcontext(trace.INVALID_SPAN)


def work_span(name: str, **attributes: Any) -> AbstractContextManager[Span]:
    """A child span of colloquy's own work (store, lock, context), current inside; errors are
    recorded. Without a tracer provider, a shared no-op (see genai.tracing)."""
    if not tracing():
        return _NO_SPAN
    return tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes={
        k: v for k, v in attributes.items() if v is not None})


def context_attributes(span: Span, policy: Any, history: int, ctx: Any, tokens: int) -> None:
    """What the context policy kept, on its span."""
    if not span.is_recording():
        return
    breakpoints = sum(1 for b in ctx.system if getattr(b, "cache_control", None)) + sum(
        1 for m in ctx.messages for b in m.content if getattr(b, "cache_control", None))
    span.set_attributes({
        "colloquy.context.policy": type(policy).__name__,
        "colloquy.context.input_tokens": tokens,
        "colloquy.context.messages": len(ctx.messages),
        "colloquy.context.history_messages": history,
        "colloquy.context.parts": sorted(getattr(ctx, "part_sources", {}) or {}),
        "colloquy.context.cache_breakpoints": breakpoints,
    })


def tool_span(call: Any, description: str | None = None) -> Any:
    """The conventions' tool execution span (``execute_tool {gen_ai.tool.name}``)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": call.id,
        "gen_ai.tool.type": "function",
    }
    if description:
        attrs["gen_ai.tool.description"] = description
    if capturing_content():
        attrs["gen_ai.tool.call.arguments"] = json.dumps(call.input, ensure_ascii=False)
    return tracer.start_as_current_span(f"execute_tool {call.name}", kind=SpanKind.INTERNAL,
                                        attributes=attrs)


def tool_result(span: Span, result: Any) -> None:
    """Mark a tool span with its result: an ``is_error`` result is the tool's failure."""
    if result.is_error:
        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR, "tool_error"))
    if capturing_content() and span.is_recording():
        content = result.content
        if not isinstance(content, str):
            content = "".join(getattr(b, "text", "") for b in content)
        span.set_attribute("gen_ai.tool.call.result", content)


def store_system(store: Any) -> str:
    """``db.system.name`` of a store (sqlite, postgresql) or its class name."""
    name = type(store).__name__
    return {"SQLiteStore": "sqlite", "PostgresStore": "postgresql"}.get(name, name)

