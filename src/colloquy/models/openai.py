"""OpenAI chat completions, and every server that speaks the same protocol.

One adapter covers OpenAI itself and the OpenAI-compatible local servers (Ollama, vLLM,
llama.cpp): they differ only in base URL, key and a few request fields, so they are
configuration of this class rather than code of their own. Conversations stay in colloquy's
Anthropic shape and are converted at this edge by :func:`~colloquy.openai_shape.openai_messages`;
answers are converted back into colloquy blocks, and SDK errors into colloquy's error tree.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import openai

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
from ..messages import MAX_JSON_DEPTH, ContentBlock, TextBlock, ToolUseBlock, json_text_depth
from ..openai_shape import openai_messages
from ..tokens import estimated_usage
from ..usage import Usage
from .base import (Model, ModelRequest, ModelResponse, StopReason, StreamEvent, TextDelta,
                   per_loop)
from .limits import LOCAL_PROVIDERS

OPENAI_BASE_URL = "https://api.openai.com/v1"

#: Sent as the bearer token to local servers that need no key: the SDK insists on one.
PLACEHOLDER_API_KEY = "sk-no-key-required"
#: Keys that are no secret: the placeholder above, the provider names colloquy uses as the
#: default key of local servers (``llamacpp:NAME`` sends "llamacpp"), and the "EMPTY" of
#: vLLM's docs. Scrubbing them would hide words ("llamacpp connection failed") and protect
#: nothing.
PLACEHOLDER_KEYS = frozenset({PLACEHOLDER_API_KEY, "empty", "none", "no-key", "sk-no-key",
                              *LOCAL_PROVIDERS})


def is_placeholder_key(key: str | None) -> bool:
    """True for a missing key or one of :data:`PLACEHOLDER_KEYS` (case-insensitive)."""
    return not key or key.strip().lower() in PLACEHOLDER_KEYS

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

#: Error codes/types and message fragments by which OpenAI, vLLM and llama.cpp say "too long".
_CONTEXT_CODES = ("context_length_exceeded", "exceed_context_size")
_CONTEXT_PHRASES = (
    "maximum context length",
    "context length exceeded",
    "context_length_exceeded",
    "exceeds the available context size",
    "context window",
)


class OpenAIModel(Model):
    """A chat model behind the OpenAI chat-completions API (OpenAI, Ollama, vLLM, llama.cpp)."""

    def __init__(
        self,
        name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        environ: Mapping[str, str] | None = None,
        provider: str = "openai",
        max_retries: int = 2,
        timeout: float = 600.0,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
    ) -> None:
        """Resolve key and URL now, so a missing key fails at startup rather than mid-chat.

        ``environ`` replaces ``os.environ`` (for tests and embedding); the key and base URL are
        always passed to the SDK explicitly so it never falls back to the process environment.
        """
        env = os.environ if environ is None else environ
        self.name = name
        self.provider = provider
        self.base_url = base_url or env.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        key = api_key or env.get("OPENAI_API_KEY")
        if client is None and not key:
            if not self._is_custom_server:
                raise MissingAPIKeyError("OPENAI_API_KEY", name)
            key = PLACEHOLDER_API_KEY
        self._api_key = key or ""
        options: dict[str, Any] = dict(
            api_key=self._api_key, base_url=self.base_url, max_retries=max_retries, timeout=timeout)
        self._client = client or openai.OpenAI(**options)
        #: The async client's options (None: a ready sync client was given without its twin,
        #: so async callers run it in a thread).
        self._async_options = None if client is not None else options
        self._async = async_client

    def _async_client(self) -> openai.AsyncOpenAI | None:
        """The async twin of the client, one per event loop (its connection pool belongs to
        the loop that made it), built on first use."""
        if self._async is not None or self._async_options is None:
            return self._async
        return per_loop(self, lambda: openai.AsyncOpenAI(**self._async_options or {}))

    @property
    def _is_custom_server(self) -> bool:
        """True when talking to something other than api.openai.com (which always needs a key)."""
        return not self.base_url.rstrip("/").startswith("https://api.openai.com")

    # -- requests ---------------------------------------------------------------------------

    def _params(self, req: ModelRequest) -> tuple[dict[str, Any], list[str]]:
        """The chat-completions body for a request (everything but ``stream``), and notes on
        what it could not carry (see :func:`~colloquy.openai_shape.openai_messages`)."""
        messages, notes = openai_messages(req.system, req.messages)
        params: dict[str, Any] = {"model": self.name, "messages": messages}
        tools = [t.to_openai() for t in req.tools if not t.is_server_tool]
        if len(tools) < len(req.tools):
            names = ", ".join(t.name for t in req.tools if t.is_server_tool)
            notes.append(f"server tools not offered to the OpenAI-shaped model: {names}")
        if tools:
            params["tools"] = tools
        choice = req.tool_choice
        if choice is not None and tools and (choice.type != "tool" or any(
                t["function"]["name"] == choice.name for t in tools)):
            params["tool_choice"], parallel = choice.to_openai()
            if parallel is not None:
                params["parallel_tool_calls"] = parallel
        elif choice is not None:
            notes.append("tool_choice not sent to the OpenAI-shaped model: the tools it concerns "
                         "are server tools, not offered to it")
        if req.temperature is not None:
            params["temperature"] = req.temperature
        if req.thinking:
            effort = reasoning_effort(self.name, req.thinking)
            if effort is None:
                notes.append(f"thinking not asked of {self.name}: it takes no reasoning budget")
            else:
                params["reasoning_effort"] = effort
        # OpenAI deprecated max_tokens (reasoning models reject it); compatible servers may
        # only know the old name.
        limit_field = "max_completion_tokens" if self.provider == "openai" else "max_tokens"
        params[limit_field] = req.max_tokens
        return params, notes

    def request(self, request: ModelRequest) -> ModelResponse:
        """One non-streamed call, its answer mapped to colloquy blocks."""
        params, notes = self._params(request)
        try:
            completion = self._client.chat.completions.create(**params)
        except openai.OpenAIError as e:
            raise self._map_error(e) from e
        return self._from_completion(completion, request, notes)

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        """As :meth:`request`, awaited on the event loop with the SDK's async client."""
        client = self._async_client()
        if client is None:
            return await super().arequest(request)
        params, notes = self._params(request)
        try:
            completion = await client.chat.completions.create(**params)
        except openai.OpenAIError as e:
            raise self._map_error(e) from e
        return self._from_completion(completion, request, notes)

    def _stream_params(self, request: ModelRequest) -> tuple[dict[str, Any], list[str]]:
        """As :meth:`_params`, streamed. ``include_usage`` makes the server send a final
        usage-only chunk, without which a streamed reply could not be billed."""
        params, notes = self._params(request)
        return {**params, "stream": True, "stream_options": {"include_usage": True}}, notes

    def stream(self, request: ModelRequest) -> Iterator[StreamEvent]:
        """Yield text as it arrives, assembling tool calls from their pieces, then the response."""
        state = _StreamState(self.name)
        params, notes = self._stream_params(request)
        try:
            with self._client.chat.completions.create(**params) as stream:
                for chunk in stream:
                    for text in state.add(chunk):
                        yield TextDelta(text=text)
        except openai.OpenAIError as e:
            raise self._map_error(e) from e
        yield self._from_stream(state, request, notes)

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """As :meth:`stream`, on the event loop; closing the iterator (or cancelling its task)
        closes the HTTP response at once."""
        client = self._async_client()
        if client is None:
            async for event in super().astream(request):
                yield event
            return
        state = _StreamState(self.name)
        params, notes = self._stream_params(request)
        try:
            stream = await client.chat.completions.create(**params)
            async with stream:
                async for chunk in stream:
                    for text in state.add(chunk):
                        yield TextDelta(text=text)
        except openai.OpenAIError as e:
            raise self._map_error(e) from e
        yield self._from_stream(state, request, notes)

    # -- answers (shared by every way of calling: plain, streamed, and any async twin) ------

    def _from_completion(self, completion: Any, request: ModelRequest,
                         notes: list[str]) -> ModelResponse:
        """A ``chat.completion`` as a :class:`ModelResponse`. Raises EmptyCompletionError."""
        choices = completion.choices or []
        if not choices:
            raise EmptyCompletionError(f"{self.provider} returned no choices",
                                       provider=self.provider)
        choice = choices[0]
        message = choice.message
        content: list[ContentBlock] = []
        text = message.content or getattr(message, "refusal", None) or ""
        if text:
            content.append(TextBlock(text=text))
        for call in message.tool_calls or []:
            if getattr(call, "type", "function") == "custom":
                custom = getattr(call, "custom", None)
                content.append(
                    ToolUseBlock(
                        id=call.id,
                        name=getattr(custom, "name", ""),
                        input={"_raw": getattr(custom, "input", "")},
                    )
                )
                continue
            content.append(
                ToolUseBlock(
                    id=call.id or _fresh_call_id(),
                    name=call.function.name,
                    input=_parse_arguments(call.function.arguments),
                )
            )
        refused = bool(getattr(message, "refusal", None)) and not message.content
        return self._response(request, content, choice.finish_reason, refused,
                              completion.usage, completion.model or self.name, completion.id,
                              notes, streamed=False)

    def _from_stream(self, state: _StreamState, request: ModelRequest,
                     notes: list[str]) -> ModelResponse:
        """The response assembled from a whole stream. Raises EmptyCompletionError."""
        content: list[ContentBlock] = []
        text = "".join(state.text_parts) or "".join(state.refusal_parts)
        if text:
            content.append(TextBlock(text=text))
        for index in sorted(state.calls):
            call = state.calls[index]
            content.append(
                ToolUseBlock(
                    id=call["id"] or _fresh_call_id(),
                    name=call["name"],
                    input=_parse_arguments("".join(call["arguments"])),
                )
            )
        refused = bool(state.refusal_parts) and not state.text_parts
        return self._response(request, content, state.finish_reason, refused, state.usage,
                              state.model, state.response_id, notes, streamed=True)

    def _response(self, request: ModelRequest, content: list[ContentBlock],
                  finish_reason: str | None, refused: bool, usage: Any, model: str,
                  response_id: str | None, notes: list[str], *, streamed: bool) -> ModelResponse:
        self._check_not_empty(content, finish_reason, streamed=streamed)
        return ModelResponse(
            content=content,
            stop_reason=_stop_reason(finish_reason, content, refused),
            # A server that sends no usage (llama.cpp streams none) gets an estimate, marked.
            usage=_usage(usage) or estimated_usage(
                request.system, request.messages, request.tools, content),
            model=model,
            id=response_id,
            notes=notes,
        )

    def _check_not_empty(self, content: list[ContentBlock], finish_reason: str | None,
                         *, streamed: bool) -> None:
        """A 200 with no text and no tool call is a failed call, not an empty reply: llama.cpp's
        server answers so when the prompt overflows its context while streaming. A reply cut
        by the token limit (finish_reason "length") is an answer of its own and passes."""
        if content or finish_reason in ("length", "content_filter"):
            return
        how = "stream" if streamed else "completion"
        raise EmptyCompletionError(
            f"{self.provider} at {self.base_url} answered an empty {how} (no text, no tool call, "
            f"finish_reason {finish_reason!r}); the prompt may be over the server's context "
            "size", provider=self.provider)

    # -- errors -----------------------------------------------------------------------------

    def _map_error(self, error: openai.OpenAIError) -> ModelError:
        """Translate an SDK error into colloquy's tree, keeping status, request id and the
        server's retry hint, and scrubbing the API key from anything the server echoed."""
        message = self._redact(_error_message(error))
        if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
            kind = "timed out" if isinstance(error, openai.APITimeoutError) else "connection failed"
            return ModelConnectionError(
                f"{self.provider} {kind} at {self.base_url}: {message}", provider=self.provider
            )
        if not isinstance(error, openai.APIStatusError):
            # A generic APIError is an error event inside an SSE stream: no HTTP status.
            cls: type[ModelError] = (
                ContextTooLongError if _is_context_error(error, message) else ModelError
            )
            return cls(message, provider=self.provider)
        status = error.status_code
        headers = error.response.headers
        kwargs: dict[str, Any] = {
            "provider": self.provider,
            "status": status,
            "request_id": error.request_id or headers.get("x-request-id"),
            "retry_after": _retry_after(headers),
        }
        if status == 429:
            return RateLimitError(message, **kwargs)
        if status in (503, 529):
            return OverloadedError(message, **kwargs)
        if status in (400, 413, 422) and _is_context_error(error, message):
            return ContextTooLongError(message, **kwargs)
        if status in (400, 422):
            return BadRequestError(message, **kwargs)
        if status in (401, 403):
            return AuthenticationError(message, **kwargs)
        return ModelError(message, **kwargs)

    def _redact(self, text: str) -> str:
        if not is_placeholder_key(self._api_key) and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "[redacted]")
        return text


# -- helpers ---------------------------------------------------------------------------------


#: OpenAI's reasoning models, which take ``reasoning_effort`` (not a token budget).
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def reasoning_effort(model: str, budget: int) -> str | None:
    """A thinking budget (tokens) as OpenAI's ``reasoning_effort`` for its reasoning models
    (under 4,096 tokens "low", under 16,384 "medium", else "high"); None for other models,
    which take no such option."""
    if not model.startswith(_REASONING_PREFIXES):
        return None
    return "low" if budget < 4_096 else "medium" if budget < 16_384 else "high"


def _fresh_call_id() -> str:
    """An id for a tool call whose server sent none (some local servers omit it)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _parse_arguments(arguments: str | None) -> dict[str, Any]:
    """Tool arguments as a dict. Models sometimes emit broken JSON: keep it under ``_raw`` so
    the tool loop can report the mistake back to the model instead of crashing."""
    if arguments is None or not arguments.strip():
        return {}
    if json_text_depth(arguments) > MAX_JSON_DEPTH:  # the parser recurses; the block would
        return {"_raw": arguments}                    # be refused deeper than this anyway
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


class _StreamState:
    """What a stream has said so far: text and refusal pieces, tool calls by index, the
    finish reason, usage (from the final usage-only chunk, if the server sends one)."""

    def __init__(self, model: str) -> None:
        self.text_parts: list[str] = []
        self.refusal_parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model = model
        self.response_id: str | None = None

    def add(self, chunk: Any) -> list[str]:
        """Fold one ``chat.completion.chunk`` in; return its text deltas, in order."""
        deltas: list[str] = []
        self.response_id = self.response_id or getattr(chunk, "id", None)
        self.model = getattr(chunk, "model", None) or self.model
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        for choice in chunk.choices or []:
            if getattr(choice, "index", 0) not in (0, None):
                continue
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    self.text_parts.append(delta.content)
                    deltas.append(delta.content)
                if getattr(delta, "refusal", None):
                    self.refusal_parts.append(delta.refusal)
                    deltas.append(delta.refusal)
                for position, tc in enumerate(delta.tool_calls or []):
                    _accumulate_call(self.calls, tc, position)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return deltas


def _accumulate_call(calls: dict[int, dict[str, Any]], tc: Any, position: int) -> None:
    """Merge one streamed tool-call delta: id and name arrive once, arguments in pieces."""
    index = tc.index if getattr(tc, "index", None) is not None else position
    call = calls.setdefault(index, {"id": None, "name": "", "arguments": []})
    if getattr(tc, "id", None) and not call["id"]:
        call["id"] = tc.id
    fn = getattr(tc, "function", None)
    if fn is not None:
        if fn.name and not call["name"]:
            call["name"] = fn.name
        if fn.arguments:
            call["arguments"].append(fn.arguments)


def _stop_reason(
    finish_reason: str | None, content: list[ContentBlock], refused: bool
) -> StopReason:
    """Map finish_reason. Some compatible servers report "stop" even when they called tools;
    the tool calls are what the engine must act on, so they win."""
    has_calls = any(isinstance(b, ToolUseBlock) for b in content)
    if refused:
        return "refusal"
    reason = _STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if has_calls and reason == "end_turn":
        return "tool_use"
    return reason


def _usage(usage: Any) -> Usage | None:
    """OpenAI counts cached tokens inside prompt_tokens; colloquy's input_tokens excludes them.
    None when the server reported no usage (the caller estimates it instead)."""
    if usage is None:
        return None
    prompt = getattr(usage, "prompt_tokens", None) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    return Usage(
        input_tokens=max(prompt - cached, 0),
        output_tokens=getattr(usage, "completion_tokens", None) or 0,
        cache_read_tokens=cached,
    )


def _error_message(error: openai.OpenAIError) -> str:
    """The server's own message when it sent one, else the SDK's."""
    body = getattr(error, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(getattr(error, "message", None) or error)


def _is_context_error(error: openai.OpenAIError, message: str) -> bool:
    code = " ".join(str(getattr(error, attr, None) or "") for attr in ("code", "type")).lower()
    if any(c in code for c in _CONTEXT_CODES):
        return True
    lowered = message.lower()
    return any(p in lowered for p in _CONTEXT_PHRASES)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` wins over ``retry-after``)."""
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(float(value) / divisor, 0.0)
        except ValueError:
            continue
    return None


__all__ = ["OpenAIModel"]
