"""The Anthropic Messages API, through the official ``anthropic`` SDK.

colloquy's messages already are in the Anthropic shape, so this adapter is thin: it sends
:meth:`ModelRequest.to_anthropic` as is, turns the SDK's ``Message`` back into colloquy blocks,
and translates the SDK's exceptions into colloquy's error tree (:func:`translate_error`), so the
engine, CLI and server never see an SDK type. Retries on 429/5xx/529 and connection errors are
the SDK's own (``max_retries``, honouring ``retry-after``); only what is left after them surfaces.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import anthropic
from anthropic.types import Message as SDKMessage
from pydantic import TypeAdapter

from ..errors import (
    AuthenticationError,
    BadRequestError,
    ContextTooLongError,
    EmptyCompletionError,
    MissingAPIKeyError,
    ModelConnectionError,
    ModelError,
    OverloadedError,
    RateLimitError,
)
from ..messages import ContentBlock
from ..usage import Usage
from .base import (
    Model,
    ModelRequest,
    ModelResponse,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    per_loop,
)

PROVIDER = "anthropic"
API_KEY_VAR = "ANTHROPIC_API_KEY"
BASE_URL_VAR = "ANTHROPIC_BASE_URL"
#: Passed explicitly (rather than ``None``) so that an injected ``environ`` is the only
#: environment consulted: the SDK would otherwise read ``ANTHROPIC_BASE_URL`` from os.environ.
DEFAULT_BASE_URL = "https://api.anthropic.com"

#: Request-body keys that ``messages.create`` takes as keyword arguments. Everything else in
#: the body (``temperature``: SDK 2.x has no such parameter) goes through ``extra_body``, so
#: the server still receives exactly :meth:`ModelRequest.to_anthropic`.
_CREATE_PARAMS = frozenset({"model", "max_tokens", "messages", "system", "tools", "tool_choice",
                            "thinking"})
_COUNT_PARAMS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})

#: The HTTP status each API error type has. An error sent *inside* a stream arrives on an
#: HTTP 200 response; we report the status the same error has before a stream starts, so
#: callers handle both alike.
_STATUS_OF_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}

_TOO_LONG = re.compile(
    r"prompt is too long|context (?:window|length)|maximum context|too many (?:input )?tokens",
    re.IGNORECASE,
)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors raised while a stream is being read: the SDK wraps connection failures
    only while sending, not while iterating the body. SDK 2.x uses httpx2, older ones httpx."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()
_CAUGHT: tuple[type[BaseException], ...] = (anthropic.AnthropicError, *_TRANSPORT_ERRORS)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the API asked us to wait (``retry-after``, or the SDK's ``retry-after-ms``)."""
    for name, scale in (("retry-after", 1.0), ("retry-after-ms", 0.001)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                continue  # an HTTP date: rare from this API, and not worth parsing here
    return None


def _error_field(body: object, key: str) -> str | None:
    """``body["error"][key]`` when the body has the API's error shape."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get(key), str):
            return str(error[key])
    return None


def _error_class(status: int | None, error_type: str | None, message: str) -> type[ModelError]:
    if status == 429 or error_type == "rate_limit_error":
        return RateLimitError
    if status in (503, 529) or error_type == "overloaded_error":
        return OverloadedError
    if status in (401, 403) or error_type in ("authentication_error", "permission_error"):
        return AuthenticationError
    if status in (400, 413) and _TOO_LONG.search(message):
        return ContextTooLongError
    if status in (400, 422):
        return BadRequestError
    return ModelError


def translate_error(err: BaseException, *, secret: str | None = None) -> ModelError:
    """Turn an SDK (or transport) exception into colloquy's error, keeping status, request id
    and retry-after. ``secret`` (the API key) is scrubbed from the message, whatever echoed it."""

    def scrub(text: str) -> str:
        return text.replace(secret, "[redacted]") if secret else text

    if isinstance(err, anthropic.APITimeoutError):
        return ModelConnectionError("the Anthropic API timed out", provider=PROVIDER)
    if isinstance(err, (anthropic.APIConnectionError, *_TRANSPORT_ERRORS)):
        cause = err.__cause__ if isinstance(err, anthropic.APIError) else err
        detail = f": {cause}" if cause is not None and str(cause) else ""
        return ModelConnectionError(
            scrub(f"connection to the Anthropic API failed{detail}"), provider=PROVIDER
        )
    if isinstance(err, anthropic.APIStatusError):
        body = err.body
        error_type = _error_field(body, "type")
        message = _error_field(body, "message") or err.message
        status: int | None = err.status_code
        if status == 200:  # an `event: error` in the middle of a stream
            status = _STATUS_OF_TYPE.get(error_type or "")
        headers = err.response.headers
        request_id = err.request_id or headers.get("request-id")
        if request_id is None and isinstance(body, Mapping):
            request_id = body.get("request_id")
        cls = _error_class(status, error_type, message)
        kind = f"{error_type}: " if error_type else ""
        return cls(
            scrub(f"Anthropic API error: {kind}{message}"),
            provider=PROVIDER,
            status=status,
            request_id=str(request_id) if request_id else None,
            retry_after=_retry_after(headers),
        )
    return ModelError(scrub(f"Anthropic API error: {err}"), provider=PROVIDER)


_BLOCKS: TypeAdapter[list[ContentBlock]] = TypeAdapter(list[ContentBlock])


def _to_blocks(content: list[Any]) -> list[ContentBlock]:
    """The API's content blocks as colloquy blocks, losslessly: text with its citations,
    thinking with its signature, redacted thinking, tool and server-tool blocks, and any block
    type colloquy does not know (kept whole as an UnknownBlock), so each is replayed exactly as
    the API sent it."""
    raw = [b.to_dict(mode="json") if hasattr(b, "to_dict") else dict(b) for b in content]
    return _BLOCKS.validate_python(raw)


def _to_usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", None) or 0,
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", None) or 0,
    )


def _delta(event: Any) -> TextDelta | ThinkingDelta | None:
    """The SDK's raw ``content_block_delta`` as colloquy's delta, with its block's ``index``:
    text, thinking, or the thinking block's signature (which ends it); None for the rest (the
    final message carries them whole: tool inputs, citations)."""
    if event.type != "content_block_delta":
        return None
    delta, index = event.delta, event.index
    if delta.type == "text_delta" and delta.text:
        return TextDelta(delta.text, index)
    if delta.type == "thinking_delta" and delta.thinking:
        return ThinkingDelta(delta.thinking, "", index)
    if delta.type == "signature_delta" and delta.signature:
        return ThinkingDelta("", delta.signature, index)
    return None


def to_model_response(message: SDKMessage) -> ModelResponse:
    """An SDK ``Message`` (from ``create`` or a finished stream) as a :class:`ModelResponse`;
    its stop_reason as the API said it (``model_context_window_exceeded``, ``refusal``, and any
    reason added after this SDK, which the SDK passes on as a string)."""
    return ModelResponse(
        content=_to_blocks(list(message.content)),
        stop_reason=message.stop_reason,
        usage=_to_usage(message.usage),
        model=message.model or "",
        id=message.id,
    )


def _answered(message: object, request_id: str | None) -> SDKMessage:
    """The API's message, or EmptyCompletionError when the call ended with no content at all:
    no message (an empty body, a stream with no ``message_start``, a body that is not a
    Message), or a message with no block holding anything that never said why it stopped
    (``message_start`` then ``message_stop``). A message with a stop_reason and no content is
    an answer (the API's empty ``end_turn``, a ``refusal``), not this."""
    if isinstance(message, SDKMessage) and (message.stop_reason is not None or not all(
            b.type == "text" and not b.text for b in message.content)):
        return message
    raise EmptyCompletionError(
        "the Anthropic API's answer ended with no content: no message, or a message with no "
        "content and no stop_reason (an empty response)", provider=PROVIDER,
        request_id=request_id or getattr(message, "_request_id", None))


class AnthropicModel(Model):
    """Claude through the Anthropic Messages API."""

    provider = PROVIDER

    def __init__(
        self,
        name: str = "claude-sonnet-4-6",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        environ: Mapping[str, str] | None = None,
        max_retries: int = 2,
        timeout: float = 600.0,
        client: anthropic.Anthropic | None = None,
        async_client: anthropic.AsyncAnthropic | None = None,
    ) -> None:
        """Fail here, not on the first message, when no key is set. A ready ``client`` (a
        custom transport, Bedrock or Vertex) is used as is and needs no key from us; give its
        ``async_client`` twin too, or async callers run the sync client in a thread."""
        self.name = name
        self._async: anthropic.AsyncAnthropic | None = async_client
        if client is not None:
            self._client = client
            self._secret = getattr(client, "api_key", None)
            self._async_options: dict[str, Any] | None = None
            return
        env = os.environ if environ is None else environ
        key = api_key or env.get(API_KEY_VAR)
        if not key:
            raise MissingAPIKeyError(API_KEY_VAR, name)
        self._secret = key
        self._async_options = dict(
            api_key=key,
            base_url=base_url or env.get(BASE_URL_VAR) or DEFAULT_BASE_URL,
            max_retries=max_retries,
            # A short connect timeout: an unreachable host should fail in seconds, while a
            # long generation may legitimately take minutes to read.
            timeout=anthropic.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self._client = anthropic.Anthropic(**self._async_options)

    def _async_client(self) -> anthropic.AsyncAnthropic | None:
        """The async twin of the client, one per event loop (its connection pool belongs to
        the loop that made it), built on first use; None when only a sync client was given."""
        if self._async is not None or self._async_options is None:
            return self._async
        return per_loop(self, lambda: anthropic.AsyncAnthropic(**self._async_options or {}))

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        body = request.to_anthropic()
        if not body.get("model"):
            body["model"] = self.name
        return body

    def _create_kwargs(self, request: ModelRequest) -> dict[str, Any]:
        body = self._body(request)
        kwargs = {k: v for k, v in body.items() if k in _CREATE_PARAMS}
        extra = {k: v for k, v in body.items() if k not in _CREATE_PARAMS}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _error(self, err: BaseException) -> ModelError:
        return translate_error(err, secret=self._secret)

    def request(self, request: ModelRequest) -> ModelResponse:
        try:
            message = self._client.messages.create(**self._create_kwargs(request))
        except _CAUGHT as err:
            raise self._error(err) from err
        return to_model_response(_answered(message, None))

    def stream(self, request: ModelRequest) -> Iterator[StreamEvent]:
        """Text and thinking deltas as they arrive, then the response assembled by the SDK from
        the whole stream (tool inputs from their ``input_json_delta`` pieces, signatures from
        ``signature_delta``, citations from ``citations_delta``)."""
        final: SDKMessage | None = None
        try:
            with self._client.messages.stream(**self._create_kwargs(request)) as stream:
                started = False
                for event in stream:
                    started = started or event.type == "message_start"
                    delta = _delta(event)
                    if delta is not None:
                        yield delta
                final = stream.get_final_message() if started else None
                request_id = stream.request_id
        except _CAUGHT as err:
            raise self._error(err) from err
        yield to_model_response(_answered(final, request_id))

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        client = self._async_client()
        if client is None:
            return await super().arequest(request)
        try:
            message = await client.messages.create(**self._create_kwargs(request))
        except _CAUGHT as err:
            raise self._error(err) from err
        return to_model_response(_answered(message, None))

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """As :meth:`stream`, on the event loop; closing the iterator (or cancelling its task)
        closes the HTTP response at once, which ends the generation at the provider."""
        client = self._async_client()
        if client is None:
            async for event in super().astream(request):
                yield event
            return
        final: SDKMessage | None = None
        try:
            async with client.messages.stream(**self._create_kwargs(request)) as stream:
                started = False
                async for sdk_event in stream:
                    started = started or sdk_event.type == "message_start"
                    delta = _delta(sdk_event)
                    if delta is not None:
                        yield delta
                final = await stream.get_final_message() if started else None
                request_id = stream.request_id
        except _CAUGHT as err:
            raise self._error(err) from err
        yield to_model_response(_answered(final, request_id))

    def count_tokens(self, request: ModelRequest) -> int:
        """The provider's exact count of the prompt (system, messages and tools)."""
        body = self._body(request)
        try:
            result = self._client.messages.count_tokens(
                **{k: v for k, v in body.items() if k in _COUNT_PARAMS}
            )
        except _CAUGHT as err:
            raise self._error(err) from err
        return int(result.input_tokens)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()
