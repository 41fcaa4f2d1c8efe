"""The one interface every model implements.

A model adapter implements :meth:`Model.request` (one call in, one response out) and, when the
provider streams, :meth:`Model.stream`. Everything else (context policies, storage, the tool
loop, cost accounting) lives in the engine, so a new provider is one small class.

The async API (``Chat.asend``/``astream``, the service) calls :meth:`Model.arequest` and
:meth:`Model.astream`. Adapters with an async client (the Anthropic and OpenAI SDKs') override
them, so a call that waits on the provider holds no thread; the defaults run the sync methods
in a thread of their own pool (:data:`BLOCKING_CALL_THREADS`), so every model works there too.
"""

from __future__ import annotations

import asyncio
import re
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from ..errors import ToolError

from ..messages import ContentBlock, Message, TextBlock, ThinkingBlock, ToolUseBlock, json_problem
from ..telemetry.genai import instrument_class
from ..text import Text, clean_json
from ..usage import FREE_PROVIDERS, Usage, cost_of

#: Why a reply stopped, in the Messages API's words: ``end_turn``, ``max_tokens``,
#: ``stop_sequence``, ``tool_use``, ``pause_turn``, ``refusal``,
#: ``model_context_window_exceeded`` (OpenAI's finish_reason is mapped onto them). A reason a
#: provider adds later is passed through as its string, stored and reported as it came.
StopReason = str

#: The stop reasons of a reply cut off before it was complete: at ``max_tokens``, or when the
#: model's context window filled up (Anthropic's newer models).
CUT_OFF: frozenset[str] = frozenset({"max_tokens", "model_context_window_exceeded"})

#: Threads for the calls of models that have no async client (the default arequest/astream):
#: each waiting call holds one, as every turn did before the async API (issue 16).
BLOCKING_CALL_THREADS = 64
_blocking: ThreadPoolExecutor | None = None
_blocking_guard = threading.Lock()


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Any]] = (
    weakref.WeakKeyDictionary())


def per_loop(owner: object, make: Callable[[], Any]) -> Any:
    """``owner``'s object for the running event loop (an SDK's async client: its connection
    pool belongs to one loop), made on first use and dropped with the loop."""
    loop = asyncio.get_running_loop()
    with _blocking_guard:
        table = _per_loop.setdefault(loop, {})
        made = table.get(id(owner))
        if made is None or made[0] is not owner:
            made = table[id(owner)] = (owner, make())
        return made[1]


def _blocking_pool() -> ThreadPoolExecutor:
    global _blocking
    with _blocking_guard:
        if _blocking is None:
            _blocking = ThreadPoolExecutor(BLOCKING_CALL_THREADS, thread_name_prefix="colloquy-model")
        return _blocking


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_NAME_RULE = "a tool name is 1 to 64 letters, digits, _ or - (^[a-zA-Z0-9_-]{1,64}$)"


class ToolSpec(BaseModel):
    """What the model is told about a tool: name, description and a JSON schema of its input.

    ``definition`` holds a tool the *provider* runs, as its API defines it (Anthropic's
    ``{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}``, code execution,
    web fetch): sent as is to that provider, and left out (with a note) for another."""

    model_config = ConfigDict(frozen=True)
    # Every text follows the text rule (colloquy.text): a lone surrogate in a docstring or a
    # Field(description=...) read with surrogateescape would fail every request otherwise.
    name: Text
    description: Text = ""
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    definition: dict[str, Any] | None = None

    def __init__(self, **data: Any) -> None:
        # An invalid tool is a ToolError naming the rule broken (and the field, for a route's
        # error), where the tool is declared or a request describes it: not pydantic's dump.
        try:
            super().__init__(**data)
        except ValidationError as e:
            errors = e.errors(include_url=False)
            problems = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in errors)
            loc = errors[0]["loc"] if errors else ()
            raise ToolError(f"tool {data.get('name')!r}: {problems}",
                            field=str(loc[0]) if loc else "name") from None

    @model_validator(mode="after")
    def _a_tool_name(self) -> ToolSpec:
        # A client tool's name, as both APIs require it (Anthropic: ^[a-zA-Z0-9_-]{1,64}$,
        # OpenAI: a-z, A-Z, 0-9, _ and -, at most 64): refused here, not by every later call.
        if self.definition is None and not _TOOL_NAME.match(self.name):
            raise ValueError(TOOL_NAME_RULE)
        return self

    @field_validator("input_schema")
    @classmethod
    def _a_json_schema_object(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The APIs take an object schema only (Anthropic: input_schema.type must be "object").
        if v.get("type", "object") != "object":
            raise ValueError('a tool\'s input schema is a JSON schema of type "object"')
        problem = json_problem(v)
        if problem:
            raise ValueError(f"a tool's input schema {problem}")
        return cast("dict[str, Any]", clean_json(v))

    @field_validator("definition")
    @classmethod
    def _a_json_definition(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        problem = json_problem(v)
        if problem:
            raise ValueError(f"a server tool's definition {problem}")
        return cast("dict[str, Any]", clean_json(v))

    @classmethod
    def from_anthropic(cls, tool: dict[str, Any]) -> ToolSpec:
        """A tool as the Messages API's ``tools`` entry describes it: a client tool (``name``,
        ``description``, ``input_schema``) or, with a ``type`` other than ``custom``, a server
        tool kept whole."""
        kind = tool.get("type")
        if kind not in (None, "custom"):
            return cls(name=str(tool.get("name", kind)), definition=dict(tool))
        return cls(name=tool["name"], description=tool.get("description") or "",
                   input_schema=tool.get("input_schema") or {"type": "object", "properties": {}})

    @property
    def is_server_tool(self) -> bool:
        return self.definition is not None

    def to_anthropic(self) -> dict[str, Any]:
        if self.definition is not None:
            return dict(self.definition)
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.input_schema,
            },
        }


class ToolChoice(BaseModel):
    """How the model may use the request's tools, in the Messages API's terms (``tool_choice``):
    ``auto`` (it decides), ``any`` (it must call one; OpenAI's ``required``), ``none`` (it calls
    none), ``tool`` (it must call the one named ``name``). ``disable_parallel_tool_use``: at
    most one call (OpenAI's ``parallel_tool_calls: false``). Each adapter sends its provider's
    shape (:meth:`to_anthropic`, :meth:`to_openai`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named_when_tool(self) -> ToolChoice:
        if (self.type == "tool") != bool(self.name):
            raise ValueError('a tool_choice names its tool ("name") when, and only when, '
                             'its type is "tool"')
        return self

    @classmethod
    def of(cls, value: ToolChoice | str | Mapping[str, Any]) -> ToolChoice:
        """A choice from the library's forms: a ToolChoice, ``"auto"``/``"any"``/``"none"``,
        or the Messages API's object (``{"type": "tool", "name": "lookup"}``). ValueError
        otherwise."""
        if isinstance(value, ToolChoice):
            return value
        try:
            return cls.model_validate({"type": value} if isinstance(value, str) else value)
        except ValidationError as e:
            raise ValueError(f"tool_choice: {e.errors()[0]['msg']}") from None

    @classmethod
    def from_openai(cls, value: Any, parallel_tool_calls: bool | None = None) -> ToolChoice:
        """A choice from chat completions' ``tool_choice`` (``"auto"``, ``"required"``,
        ``"none"``, ``{"type": "function", "function": {"name": ...}}``) and
        ``parallel_tool_calls``. ValueError on another shape."""
        parallel = None if parallel_tool_calls is None else not parallel_tool_calls
        kinds: dict[str, Literal["auto", "any", "none"]] = {
            "auto": "auto", "required": "any", "none": "none"}
        if isinstance(value, str) and value in kinds:
            return cls(type=kinds[value], disable_parallel_tool_use=parallel)
        function = value.get("function") if isinstance(value, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(value, Mapping) or value.get("type") != "function" \
                or not isinstance(name, str) or not name:
            raise ValueError('tool_choice is "auto", "required", "none" or '
                             '{"type": "function", "function": {"name": ...}}')
        return cls(type="tool", name=name, disable_parallel_tool_use=parallel)

    def to_anthropic(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_openai(self) -> tuple[str | dict[str, Any], bool | None]:
        """(``tool_choice``, ``parallel_tool_calls``: None to leave it out)."""
        parallel = None if self.disable_parallel_tool_use is None \
            else not self.disable_parallel_tool_use
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}, parallel
        return ("required" if self.type == "any" else self.type), parallel


class ModelRequest(BaseModel):
    """Exactly what is sent to a model: the persona beside the messages, never inside them."""

    model_config = ConfigDict(frozen=True)
    model: str
    system: list[TextBlock] = Field(default_factory=list)
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    #: How the model may use ``tools``; None: the provider's default (``auto`` with tools).
    tool_choice: ToolChoice | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    #: Extended thinking's budget in tokens (Anthropic ``thinking.budget_tokens``: at least
    #: 1,024 and below ``max_tokens``); None: no thinking.
    thinking: int | None = None

    def to_anthropic(self) -> dict[str, Any]:
        """The Anthropic Messages API request body (what ``colloquy context --json`` prints)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [m.to_anthropic() for m in self.messages],
        }
        if self.system:
            body["system"] = [b.model_dump(mode="json", exclude_none=True) for b in self.system]
        if self.tools:
            body["tools"] = [t.to_anthropic() for t in self.tools]
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice.to_anthropic()
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.thinking:
            body["thinking"] = {"type": "enabled", "budget_tokens": self.thinking}
        return body


class ModelResponse(BaseModel):
    """One complete model answer: content blocks, why it stopped, and what it cost in tokens."""

    model_config = ConfigDict(frozen=True)
    content: list[ContentBlock]
    stop_reason: StopReason | None = "end_turn"
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    id: str | None = None
    #: What the adapter could not carry to this provider (e.g. thinking blocks to an OpenAI
    #: model): shown on the reply, so no conversion loses content silently.
    notes: list[str] = Field(default_factory=list)

    @property
    def message(self) -> Message:
        # The blocks were validated as this response's content (the same types a Message
        # takes), so they are not validated again: a turn reads this several times.
        return Message.model_construct(role="assistant", content=list(self.content))

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of streamed text. A plain frozen dataclass, not a pydantic model: a stream makes
    one per delta, and validating each cost a streamed turn a tenth of its CPU in the service
    (bench/stream.py's profile, issue 16); the adapters build it from the SDKs' own strings.
    ``index`` is the content block's position in the call's response (the Messages API's
    ``index``): a route that re-streams content blocks tells one text block from the next."""

    text: str
    index: int = 0


class TextPiece(str):
    """A text delta as a streamed turn yields it (colloquy.effects): the ``str`` callers of
    ``Chat.stream`` see, naming its content block: ``block``, the delta's ``index`` in the
    response of the turn's model call number ``call`` (0 first; a tool loop makes several
    calls). The Messages API's route re-streams the reply's blocks exactly from these; others
    just use the text. (Not ``index``: that is ``str.index``.)"""

    block: int
    call: int

    def __new__(cls, text: str, block: int = 0, call: int = 0) -> TextPiece:
        piece = super().__new__(cls, text)
        piece.block, piece.call = block, call
        return piece


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """A piece of streamed extended thinking (Anthropic ``thinking_delta``): shown apart from
    the answer; the whole block, signature included, arrives in the final response.
    ``signature`` is set (and ``thinking`` empty) on the block's ``signature_delta``, which
    ends the block: a route that re-streams the Messages API passes it on. A plain dataclass
    like :class:`TextDelta` (one per delta); ``index`` as there."""

    thinking: str
    signature: str = ""
    index: int = 0
    call: int = 0  # as TextPiece's, set by the turn


def block_deltas(response: ModelResponse, chunks: Callable[[str], Iterable[str]]
                 ) -> Iterator[TextDelta | ThinkingDelta]:
    """A whole response as a provider streams it: each text and thinking block's pieces
    (``chunks`` splits a text), a thinking block's signature last, each with its block's
    ``index``; for models that answer whole and stream for the caller's sake."""
    for index, block in enumerate(response.content):
        if isinstance(block, TextBlock):
            yield from (TextDelta(piece, index) for piece in chunks(block.text) if piece)
        elif isinstance(block, ThinkingBlock):
            yield from (ThinkingDelta(piece, "", index) for piece in chunks(block.thinking)
                        if piece)
            if block.signature:
                yield ThinkingDelta("", block.signature, index)


StreamEvent = TextDelta | ThinkingDelta | ModelResponse
"""A model stream yields text (and thinking) deltas, then exactly one final
:class:`ModelResponse`."""


class Model(ABC):
    """A chat model. Subclasses implement :meth:`request`; streaming is optional."""

    #: The model id sent to the provider (``claude-sonnet-4-6``, ``gpt-4o``, ``echo``).
    name: str
    #: The provider's short name, used in errors and for the price table.
    provider: str = "unknown"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every model's entry points (``request``, ``stream``, and the async ``arequest`` /
        ``astream``) are traced and measured in one place (colloquy.telemetry.genai), so no
        adapter and no call site has to remember to."""
        super().__init_subclass__(**kwargs)
        instrument_class(cls)

    @abstractmethod
    def request(self, request: ModelRequest) -> ModelResponse:
        """Send one request and return the complete response."""

    def stream(self, request: ModelRequest) -> Iterator[StreamEvent]:
        """Yield text deltas then the final response. The default does not really stream:
        it yields the whole text at once, so every model can be used where streaming is asked."""
        response = self.request(request)
        yield from block_deltas(response, lambda text: (text,))
        yield response

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        """The async :meth:`request`. The default runs :meth:`request` in a thread (so the
        event loop never blocks); a cancelled caller stops waiting at once, but the thread's
        call runs to its end (only an async client can cut it short)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_blocking_pool(), self.request, request)

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """The async :meth:`stream`. The default iterates :meth:`stream` in a thread and hands
        its events over; closing this iterator closes that stream at its next event."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        closed = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: no one is listening any more
                closed.set()

        def pump() -> None:
            events = self.stream(request)
            try:
                for event in events:
                    if closed.is_set():
                        break
                    put(("event", event))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's task
                put(("error", e))
            else:
                put(("end", None))
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()

        loop.run_in_executor(_blocking_pool(), pump)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "event":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            closed.set()

    def count_tokens(self, request: ModelRequest) -> int | None:
        """The exact input token count from the provider, or ``None`` if it has no such call."""
        return None

    @property
    def price_key(self) -> str:
        """The id used to look up this model's price (see :meth:`price_key_for`)."""
        return self.price_key_for(self.name)

    def price_key_for(self, model: str) -> str:
        """The id that prices ``model`` when called through this model's client (a Claude chat
        titles with claude-haiku-4-5 through its own client): local and offline providers are
        priced by provider (free, whatever the model is called), the others by model id."""
        return f"{self.provider}:{model}" if self.provider in FREE_PROVIDERS else model

    def cost(self, usage: Usage | None, model: str | None = None) -> float | None:
        """USD for ``usage`` of ``model`` (default: this model) through this client; ``None``
        when the price is unknown (see :func:`colloquy.usage.cost_of`)."""
        return cost_of(self.price_key_for(model or self.name), usage)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


instrument_class(Model)  # its default stream(), for models that only implement request()
