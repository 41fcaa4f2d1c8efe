"""Models that need no network: for offline demos, debugging, and users' own tests.

They are real :class:`Model` implementations, not mocks: the engine, policies and storage run
exactly as with a provider, and each double records the requests it received so a test can
assert what a provider *would have been sent*.

The record is bounded and forgets deleted conversations: ``colloquy serve --model echo`` runs
demos and load tests for hours, so an unbounded record would grow without end, and a deleted
user's words must leave the process too, not just the database (see :class:`RequestRecord`).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from ..caches import register_cache
from ..messages import ContentBlock, TextBlock, ThinkingBlock, ToolUseBlock
from ..telemetry.context import current_conversation
from ..tokens import counter, estimate_text
from ..usage import Usage
from .base import (Model, ModelRequest, ModelResponse, StreamEvent, TextDelta,
                   block_deltas)

_CHUNK = re.compile(r"\S+\s*|\s+")


def _chunks(text: str) -> Iterable[str]:
    """Split text into word-sized deltas, as a provider's stream would."""
    return _CHUNK.findall(text)


def tool_call(name: str, input: dict[str, Any] | None = None, id: str | None = None) -> ToolUseBlock:
    """A tool_use block with a fresh id, for scripting a model that calls tools."""
    return ToolUseBlock(id=id or f"toolu_{uuid.uuid4().hex[:20]}", name=name, input=input or {})


#: How many requests an offline model keeps by default (the most recent ones).
KEEP_REQUESTS = 100


class RequestRecord:
    """The last ``keep_requests`` requests a model received, thread-safely, for tests to read
    (:attr:`requests`, :attr:`last_request`): the offline models' record (these, and the
    offline summariser and fact extractor of colloquy.memory.offline).

    Each request is recorded with the conversation it was made for (the turn's, as telemetry
    knows it: colloquy.telemetry.context); deleting a conversation drops its requests, and
    those made outside any conversation, since they cannot be told apart (the record is
    registered with colloquy.caches like the recall indexes and summary caches)."""

    def _start_record(self, keep_requests: int) -> None:
        if keep_requests < 0:
            raise ValueError("keep_requests must not be negative")
        self.keep_requests = keep_requests
        self._log: list[tuple[str | None, ModelRequest]] = []
        self._lock = threading.Lock()
        register_cache(self)

    @property
    def requests(self) -> list[ModelRequest]:
        """The requests received, oldest first: the last ``keep_requests`` of them, less those
        of deleted conversations (a copy: clear the record with :meth:`clear_requests`)."""
        with self._lock:
            return [request for _, request in self._log]

    @property
    def last_request(self) -> ModelRequest:
        with self._lock:
            if not self._log:
                raise LookupError(f"{self!r} has received no request")
            return self._log[-1][1]

    def clear_requests(self) -> None:
        """Forget every recorded request."""
        with self._lock:
            self._log.clear()

    def _keep(self, request: ModelRequest) -> None:
        with self._lock:
            self._log.append((current_conversation(), request))
            if len(self._log) > self.keep_requests:
                del self._log[: len(self._log) - self.keep_requests]

    def cached_conversations(self) -> set[str]:
        """The conversations with a request recorded here (see colloquy.caches.sweep_deleted)."""
        with self._lock:
            return {cid for cid, _ in self._log if cid is not None}

    def forget_conversations(self, ids: set[str]) -> None:
        """Drop the requests made for these (deleted) conversations, and those made outside
        any conversation (see the class docstring)."""
        with self._lock:
            self._log = [(cid, r) for cid, r in self._log if cid is not None and cid not in ids]


class _RecordingModel(RequestRecord, Model):
    """Records its last requests (:class:`RequestRecord`) and streams replies word by word."""

    def __init__(self, name: str, delay: float = 0.0, keep_requests: int = KEEP_REQUESTS) -> None:
        self.name = name
        self.delay = delay
        self._start_record(keep_requests)

    def _record(self, request: ModelRequest) -> None:
        self._keep(request)

    def stream(self, request: ModelRequest) -> Iterator[StreamEvent]:
        response = self.request(request)
        for event in block_deltas(response, _chunks):
            if self.delay and isinstance(event, TextDelta):
                time.sleep(self.delay)
            yield event
        yield response

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        """Answers on the event loop (the echo model's latency is an ``asyncio.sleep``, so a
        waiting call holds no thread). A subclass that overrides :meth:`request`, and
        :class:`FunctionModel` (whose function may block), answer in a thread instead."""
        if not self._answers_inline():
            return await super().arequest(request)
        await self._await_latency()
        return self._answer(request)

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        if not self._answers_inline():
            async for event in super().astream(request):
                yield event
            return
        response = await self.arequest(request)
        for event in block_deltas(response, _chunks):
            if self.delay and isinstance(event, TextDelta):
                await asyncio.sleep(self.delay)
            yield event
        yield response

    def request(self, request: ModelRequest) -> ModelResponse:
        latency = self._latency()
        if latency:
            time.sleep(latency)
        return self._answer(request)

    def _latency(self) -> float:
        return 0.0

    def _answers_inline(self) -> bool:
        cls = type(self)
        return cls.request is _RecordingModel.request and cls.stream is _RecordingModel.stream

    async def _await_latency(self) -> None:
        latency = self._latency()
        if latency:
            await asyncio.sleep(latency)

    def _answer(self, request: ModelRequest) -> ModelResponse:
        """Record the request and compute the reply (no waiting)."""
        raise NotImplementedError

    def _response(self, request: ModelRequest, content: list[ContentBlock],
                  input_tokens: int | None = None) -> ModelResponse:
        text = "".join(b.text for b in content if isinstance(b, TextBlock))
        text += "".join(b.thinking for b in content if isinstance(b, ThinkingBlock))
        has_tools = any(isinstance(b, ToolUseBlock) for b in content)
        return ModelResponse(
            content=content,
            stop_reason="tool_use" if has_tools else "end_turn",
            usage=Usage(
                input_tokens=counter.raw(request.system, request.messages)
                if input_tokens is None else input_tokens,
                output_tokens=estimate_text(text) + 10 * sum(isinstance(b, ToolUseBlock) for b in content),
            ),
            model=self.name,
            id=f"msg_{uuid.uuid4().hex[:24]}",
        )


class EchoModel(_RecordingModel):
    """Deterministic: replies with a short report of what it received.

    ``latency`` (seconds before answering), ``delay`` (seconds between streamed words) and
    ``words`` (pad the reply to this many words) let load tests simulate a real model's timing
    and reply length without a network; as a model name: ``echo?latency=0.2&delay=0.01&words=50``.
    ``keep_requests``: how many of the latest requests :attr:`requests` keeps.
    """

    provider = "offline"

    def __init__(
        self, name: str = "echo", latency: float = 0.0, delay: float = 0.0, words: int = 0,
        keep_requests: int = KEEP_REQUESTS,
    ) -> None:
        super().__init__(name, delay, keep_requests)
        self.latency = latency
        self.words = words

    @classmethod
    def from_spec(cls, spec: str) -> EchoModel:
        """``echo`` or ``echo?latency=S&delay=S&words=N`` (the form ``colloquy serve --model``
        takes), with a clear error for anything else."""
        from urllib.parse import parse_qsl

        from ..errors import ConfigError

        _, _, query = spec.partition("?")
        options: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            kind = {"latency": float, "delay": float, "words": int}.get(key)
            if kind is None:
                raise ConfigError(f"echo model: unknown option {key!r} (use latency, delay, words)")
            try:
                options[key] = kind(value)
            except ValueError as e:
                raise ConfigError(f"echo model: {key}={value!r} is not a number") from e
            if options[key] < 0:
                raise ConfigError(f"echo model: {key} must not be negative")
        return cls(**options)

    def _latency(self) -> float:
        return self.latency

    def _answer(self, request: ModelRequest) -> ModelResponse:
        self._record(request)
        # The user's own words: the last text block of the last user message with text (a
        # policy puts blocks of its own, e.g. recalled excerpts, before them; echoing those
        # back would store them again, and recall them, every turn).
        last_user = next(
            (texts[-1] for m in reversed(request.messages) if m.role == "user"
             and (texts := [b.text for b in m.content if isinstance(b, TextBlock) and b.text])),
            "",
        )
        tokens = counter.raw(request.system, request.messages)
        n = len(request.messages)
        text = (
            f"echo: received {n} message{'s' if n != 1 else ''} "
            f"(~{tokens} tokens); last user text: {last_user!r}"
        )
        if self.words > len(text.split()):
            filler = _FILLER * (self.words // len(_FILLER) + 1)
            text += " " + " ".join(filler[: self.words - len(text.split())])
        content: list[ContentBlock] = [TextBlock(text=text)]
        if request.thinking:  # a stand-in for extended thinking, so it can be tried offline
            content.insert(0, ThinkingBlock(
                thinking=f"The user wrote {last_user!r}; I may think for up to "
                f"{request.thinking} tokens.", signature="echo"))
        return self._response(request, content, input_tokens=tokens)


_FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()

Script = str | ModelResponse | ToolUseBlock | list[ContentBlock] | BaseException
"""One scripted step: text, a full response, a tool call, several blocks, or an error to raise."""


class ScriptedModel(_RecordingModel):
    """Returns queued replies in order, for tests: ``ScriptedModel(["hi", tool_call("add", {...}),
    "the sum is 3", RateLimitError("slow down")])``. Raises ``LookupError`` when it runs out,
    so a test that makes one call too many fails loudly."""

    provider = "offline"

    def __init__(self, replies: Iterable[Script] = (), name: str = "scripted", delay: float = 0.0,
                 keep_requests: int = KEEP_REQUESTS) -> None:
        super().__init__(name, delay, keep_requests)
        self._queue: list[Script] = list(replies)

    def add(self, *replies: Script) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def remaining(self) -> int:
        return len(self._queue)

    def _answer(self, request: ModelRequest) -> ModelResponse:
        self._record(request)
        with self._lock:
            if not self._queue:
                raise LookupError(f"{self!r} has no more scripted replies")
            step = self._queue.pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, ModelResponse):
            return step
        if isinstance(step, str):
            return self._response(request, [TextBlock(text=step)])
        if isinstance(step, ToolUseBlock):
            return self._response(request, [step])
        return self._response(request, list(step))


class FunctionModel(_RecordingModel):
    """Answers with a Python function of the request: ``FunctionModel(lambda req: "ok")``.

    The function may return text, a list of blocks, or a full :class:`ModelResponse`.
    """

    provider = "offline"

    def __init__(
        self,
        fn: Callable[[ModelRequest], str | list[ContentBlock] | ModelResponse],
        name: str = "function",
        delay: float = 0.0,
        keep_requests: int = KEEP_REQUESTS,
    ) -> None:
        super().__init__(name, delay, keep_requests)
        self.fn = fn

    def _answers_inline(self) -> bool:
        return False  # the function may block (a test's barrier, a slow computation)

    def _answer(self, request: ModelRequest) -> ModelResponse:
        self._record(request)
        out = self.fn(request)
        if isinstance(out, ModelResponse):
            return out
        if isinstance(out, str):
            return self._response(request, [TextBlock(text=out)])
        return self._response(request, list(out))
