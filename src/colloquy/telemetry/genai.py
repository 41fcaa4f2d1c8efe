"""Every model call as an OpenTelemetry span in the GenAI semantic conventions, in one place.

:func:`instrument_class` wraps the entry points a model class defines (``request``, ``stream``,
and the async ``arequest`` / ``astream`` where a class has them); ``Model.__init_subclass__``
applies it to every adapter, so turns, tool rounds, summaries, fact extraction, titles and
guard judges are all covered without touching their call sites. A call made by another
instrumented entry point of the same model (the default ``stream`` calls ``request``) is not
counted twice.

The span (conventions v1.37+, "Inference" span; ``gen_ai.provider.name`` replaced the older
``gen_ai.system`` there):

* name ``{gen_ai.operation.name} {gen_ai.request.model}``, e.g. ``chat claude-sonnet-4-6``;
  kind CLIENT, or INTERNAL for offline models (they run in the process, as the conventions
  allow);
* ``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name`` (colloquy's provider name:
  ``anthropic`` and ``openai`` are the conventions' own values; ``ollama``, ``vllm``,
  ``llamacpp`` and ``offline`` are custom ones), ``gen_ai.request.model``,
  ``gen_ai.request.max_tokens``, ``gen_ai.request.temperature``, ``gen_ai.conversation.id``,
  ``server.address`` / ``server.port``;
* on success ``gen_ai.response.model``, ``gen_ai.response.id``,
  ``gen_ai.response.finish_reasons`` (colloquy's stop_reason: ``end_turn``, ``tool_use``,
  ``max_tokens``...), ``gen_ai.usage.input_tokens`` (all input, cached included, as the
  conventions ask), ``gen_ai.usage.output_tokens``, ``gen_ai.usage.cache_creation.input_tokens``,
  ``gen_ai.usage.cache_read.input_tokens``;
* on failure ``error.type`` (the exception's class name: colloquy's ``RateLimitError``,
  ``OverloadedError``, ``ContextTooLongError``, ``BadRequestError``, ``AuthenticationError``,
  ``ModelConnectionError``, ``ModelError``, or any other exception's; ``cancelled`` when the
  consumer dropped a stream) and status ERROR;
* colloquy's own: ``colloquy.purpose`` (turn, summary, extraction, title, guard, eval, other)
  and ``colloquy.cost_usd``.

Content (``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages``,
as JSON strings in the conventions' schemas) is recorded only when the operator opts in, with the
OpenTelemetry GenAI instrumentations' variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
(``true``, ``SPAN_ONLY`` or ``SPAN_AND_EVENT``) or :func:`capture_content`.

Only ``opentelemetry-api`` is used: without an SDK installed by the application every span is
a no-op.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..messages import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from . import events
from .context import current_conversation, current_purpose

def _version() -> str | None:
    try:
        return importlib.metadata.version("colloquy")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return None


#: colloquy's tracer (a proxy until the application installs a TracerProvider).
tracer = trace.get_tracer("colloquy", _version())
_NO_PROVIDER = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_ENVIRON: Any = getattr(os.environ, "_data", os.environ)  # os.environ's dict (kept in step)
_PROVIDER_VAR: Any = (os.fsencode("OTEL_PYTHON_TRACER_PROVIDER") if _ENVIRON is not os.environ
                      else "OTEL_PYTHON_TRACER_PROVIDER")


def tracing() -> bool:
    """Whether an application installed a tracer provider (the SDK's, say). Until one does,
    every span is a no-op that records nothing, so colloquy's own spans (the turn's and its
    work's, colloquy.telemetry.turns) are not made at all: a tenth of a JSON turn's CPU in the
    service went to no-op spans (bench/load.py's profile, issue 16). Checked on each use, so a
    provider installed later is seen at once. The global is read first: ``get_tracer_provider``
    looks ``OTEL_PYTHON_TRACER_PROVIDER`` up in the environment on every call until a provider
    is set, a few microseconds each, several times a turn."""
    provider = getattr(trace, "_TRACER_PROVIDER", None)
    if provider is None:
        if _PROVIDER_VAR not in _ENVIRON:  # os.environ's own dict: no key encoding, no raise
            return False
        provider = trace.get_tracer_provider()  # loads the one the environment names
    return not isinstance(provider, _NO_PROVIDER)

OPERATION = "chat"
CONTENT_VAR = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_CONTENT_ON = {"true", "1", "span_only", "span_and_event"}

#: id() of the model whose instrumented call is running in this context (see module docstring).
_inside: ContextVar[int | None] = ContextVar("colloquy_model_call", default=None)
#: (id(model), id(request)) of every instrumented call in progress: an entry point that hands
#: the same request to another one in a thread without the caller's context (the default
#: ``arequest`` running ``request`` in a pool) is recognised there too.
_in_flight: dict[tuple[int, int], int] = {}
_in_flight_guard = threading.Lock()


def _nested(model: Any, request: Any) -> bool:
    """True when this call is made by an instrumented call of the same model and request."""
    return _inside.get() == id(model) or (id(model), id(request)) in _in_flight


class _Registered:
    """Marks (model, request) as in flight while inside (a class: cheaper than a generator)."""

    __slots__ = ("key",)

    def __init__(self, model: Any, request: Any) -> None:
        self.key = (id(model), id(request))

    def __enter__(self) -> None:
        with _in_flight_guard:
            _in_flight[self.key] = _in_flight.get(self.key, 0) + 1

    def __exit__(self, *exc: object) -> None:
        with _in_flight_guard:
            if _in_flight[self.key] <= 1:
                del _in_flight[self.key]
            else:
                _in_flight[self.key] -= 1


_capture: bool | None = None


def capture_content(on: bool | None) -> None:
    """Record message content on model-call spans (True), never (False), or as the
    environment says (None, the default). Content may hold personal data: see the README."""
    global _capture
    _capture = on


def capturing_content() -> bool:
    if _capture is not None:
        return _capture
    return os.environ.get(CONTENT_VAR, "").strip().lower() in _CONTENT_ON


def error_type(error: BaseException) -> str:
    """The low-cardinality ``error.type`` of an exception: its class name."""
    return "cancelled" if isinstance(error, GeneratorExit) else type(error).__name__


# -- the span --------------------------------------------------------------------------------------


class _Call:
    """One instrumented call: its span, and the record handed to listeners at the end."""

    def __init__(self, model: Any, request: Any, streaming: bool) -> None:
        self.model, self.request, self.streaming = model, request, streaming
        self.purpose = current_purpose()
        self.conversation = current_conversation()
        self.start = time.perf_counter()
        self.first_chunk: float | None = None
        self.final: Any = None
        provider = str(getattr(model, "provider", "unknown"))
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": request.model,
            "gen_ai.request.max_tokens": request.max_tokens,
            "colloquy.purpose": self.purpose,
        }
        if request.temperature is not None:
            attrs["gen_ai.request.temperature"] = request.temperature
        if self.conversation:
            attrs["gen_ai.conversation.id"] = self.conversation
        base_url = getattr(model, "base_url", None)
        if isinstance(base_url, str) and base_url:
            parts = urlsplit(base_url)
            if parts.hostname:
                attrs["server.address"] = parts.hostname
                attrs["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
        kind = SpanKind.INTERNAL if provider == "offline" else SpanKind.CLIENT
        self.span: Span = tracer.start_span(f"{OPERATION} {request.model}", kind=kind,
                                            attributes=attrs)
        if self.span.is_recording() and capturing_content():
            if request.system:
                self.span.set_attribute("gen_ai.system_instructions", json.dumps(
                    [{"type": "text", "content": b.text} for b in request.system],
                    ensure_ascii=False))
            self.span.set_attribute("gen_ai.input.messages", json.dumps(
                [_message(m) for m in request.messages], ensure_ascii=False))

    def event(self, event: Any) -> None:
        """A stream event: a text delta (the first sets the time to first chunk) or the final
        response (it has content blocks)."""
        if hasattr(event, "content"):
            self.final = event
        elif self.first_chunk is None and bool(getattr(event, "text", None)):
            self.first_chunk = time.perf_counter() - self.start

    def end_of_stream(self) -> None:
        if self.final is None:
            self.failed(RuntimeError("the stream ended without a final message"))
        else:
            self.done(self.final)

    def done(self, response: Any) -> None:
        usage = response.usage
        span = self.span
        cost: float | None = None
        if span.is_recording() or events.listening():  # else nobody would see it
            try:
                cost = self.model.cost(usage, self.request.model)
            except Exception:  # noqa: BLE001 - a pricing fault must not fail a call that worked
                cost = None
        if span.is_recording():
            attrs: dict[str, Any] = {
                "gen_ai.response.model": response.model or self.request.model,
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
            }
            if response.id:
                attrs["gen_ai.response.id"] = response.id
            if response.stop_reason:
                attrs["gen_ai.response.finish_reasons"] = [response.stop_reason]
            if cost is not None:
                attrs["colloquy.cost_usd"] = cost
            if getattr(usage, "estimated", False):
                attrs["colloquy.usage.estimated"] = True
            span.set_attributes(attrs)
            if capturing_content():
                out = _message(response.message)
                out["finish_reason"] = _FINISH.get(response.stop_reason or "", "stop")
                span.set_attribute("gen_ai.output.messages", json.dumps([out], ensure_ascii=False))
        span.end()
        self._emit(usage=usage, cost=cost, error=None)

    def failed(self, error: BaseException) -> None:
        kind = error_type(error)
        self.span.set_attribute("error.type", kind)
        if not isinstance(error, GeneratorExit):
            self.span.record_exception(error)
        self.span.set_status(Status(StatusCode.ERROR, kind))
        self.span.end()
        self._emit(usage=None, cost=None, error=kind)

    def _emit(self, usage: Any, cost: float | None, error: str | None) -> None:
        if not events.listening():
            return
        events.emit("model_call", events.ModelCall(
            provider=str(getattr(self.model, "provider", "unknown")), model=self.request.model,
            purpose=self.purpose, conversation_id=self.conversation,
            duration=time.perf_counter() - self.start, streaming=self.streaming,
            time_to_first_chunk=self.first_chunk, usage=usage, cost_usd=cost, error_type=error,
            estimated=bool(getattr(usage, "estimated", False)),
        ))


#: colloquy's stop reasons as the conventions' output-message ``finish_reason`` values.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
           "max_tokens": "length", "model_context_window_exceeded": "length",
           "tool_use": "tool_call", "refusal": "content_filter",
           "error": "error"}


def _message(message: Message) -> dict[str, Any]:
    """A message in the conventions' input/output message schema (role and typed parts)."""
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "content": block.text})
        elif isinstance(block, ToolUseBlock):
            parts.append({"type": "tool_call", "id": block.id, "name": block.name,
                          "arguments": block.input})
        elif isinstance(block, ToolResultBlock):
            content = block.content if isinstance(block.content, str) else "".join(
                b.text for b in block.content if isinstance(b, TextBlock))
            parts.append({"type": "tool_call_response", "id": block.tool_use_id,
                          "response": content})
        elif isinstance(block, ImageBlock):
            source = block.source if isinstance(block.source, dict) else {}
            if source.get("type") == "url":
                parts.append({"type": "uri", "modality": "image", "uri": source.get("url", "")})
            else:  # inline bytes are not copied into telemetry
                parts.append({"type": "blob", "modality": "image",
                              "mime_type": source.get("media_type"), "content": ""})
    return {"role": message.role, "parts": parts}


# -- wrapping the entry points ---------------------------------------------------------------------


class _Calling:
    """One request-response call: the span, the "inside" flag and the in-flight mark while
    the adapter runs; a failure is recorded on the way out."""

    __slots__ = ("call", "registered", "token")

    def __init__(self, model: Any, request: Any) -> None:
        self.call = _Call(model, request, streaming=False)
        self.registered = _Registered(model, request)

    def __enter__(self) -> _Call:
        self.token = _inside.set(id(self.call.model))
        self.registered.__enter__()
        return self.call

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> None:
        self.registered.__exit__()
        _inside.reset(self.token)
        if error is not None:
            self.call.failed(error)


def _wrap_request(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def request(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _nested(self, request):
            return fn(self, request, *args, **kwargs)
        with _Calling(self, request) as call:
            response = fn(self, request, *args, **kwargs)
        call.done(response)
        return response

    request.__colloquy_instrumented__ = True  # type: ignore[attr-defined]
    return request


def _wrap_stream(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(fn)
    def stream(self: Any, request: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if _nested(self, request):
            yield from fn(self, request, *args, **kwargs)
            return
        call = _Call(self, request, streaming=True)
        try:
            with _Registered(self, request):
                inner = fn(self, request, *args, **kwargs)
                while True:
                    # Only the inner generator's own steps run "inside" this call: the flag
                    # is never left set in the consumer's context while a delta is handed out.
                    token = _inside.set(id(self))
                    try:
                        event = next(inner)
                    except StopIteration:
                        break
                    finally:
                        _inside.reset(token)
                    call.event(event)
                    yield event
        except BaseException as e:
            call.failed(e)
            raise
        call.end_of_stream()

    stream.__colloquy_instrumented__ = True  # type: ignore[attr-defined]
    return stream


def _wrap_arequest(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def arequest(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _nested(self, request):
            return await fn(self, request, *args, **kwargs)
        with _Calling(self, request) as call:
            response = await fn(self, request, *args, **kwargs)
        call.done(response)
        return response

    arequest.__colloquy_instrumented__ = True  # type: ignore[attr-defined]
    return arequest


def _wrap_astream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(fn)
    async def astream(self: Any, request: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if _nested(self, request):
            async for event in fn(self, request, *args, **kwargs):
                yield event
            return
        call = _Call(self, request, streaming=True)
        inner = fn(self, request, *args, **kwargs)
        try:
            with _Registered(self, request):
                while True:
                    token = _inside.set(id(self))
                    try:
                        event = await inner.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        _inside.reset(token)
                    call.event(event)
                    yield event
        except BaseException as e:
            call.failed(e)
            close = getattr(inner, "aclose", None)
            if close is not None:
                await close()
            raise
        call.end_of_stream()

    astream.__colloquy_instrumented__ = True  # type: ignore[attr-defined]
    return astream


_WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "request": _wrap_request, "stream": _wrap_stream,
    "arequest": _wrap_arequest, "astream": _wrap_astream,
}


def instrument_class(cls: type) -> None:
    """Wrap the model entry points ``cls`` itself defines (called by
    ``Model.__init_subclass__``). Abstract methods and already wrapped ones are left alone.
    ``arequest`` is awaited; ``stream`` / ``astream`` may be generator functions or return any
    (async) iterator."""
    for name, wrap in _WRAPPERS.items():
        fn = cls.__dict__.get(name)
        if fn is None or not callable(fn) or getattr(fn, "__colloquy_instrumented__", False):
            continue
        if getattr(fn, "__isabstractmethod__", False):
            continue
        if (name == "arequest") != inspect.iscoroutinefunction(fn):
            continue  # arequest must be a coroutine function; the others never are
        setattr(cls, name, wrap(fn))
