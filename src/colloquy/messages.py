"""Messages and content blocks: pure values in the Anthropic Messages shape.

Why this shape: it is the richest of the common wire formats (a message is a list of typed
blocks, tool calls and results are blocks too), so converting *down* to OpenAI's shape at the
edge loses nothing that matters, while the reverse would. Identity (conversation, sequence
number, time) is storage's job: :class:`StoredMessage` wraps a message with its place in the log.

The system prompt is never a message: it is passed beside the messages, so a persona cannot be
trimmed away by a context policy or impersonated by a stored turn.

Every string a block carries (text, tool names, ids, inputs and results, image sources) follows
the character rule of :mod:`colloquy.text` at construction, so a message read from any store or
built by any entry point can always be sent and exported.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from itertools import accumulate
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .text import JSONDict, Text, clean, clean_json
from .usage import Usage

Role = Literal["user", "assistant"]

#: The deepest nesting of JSON objects and arrays one content block may hold, the block itself
#: being level 1 (``{"type": "tool_use", "input": {"a": [1]}}`` is 3 deep). Why: past ~250
#: levels pydantic's serialiser refuses a value, so a deeper block, once stored, would fail
#: every send and every export of its user; 64 leaves room for any real tool input or JSON
#: schema (published schemas nest well under 20). Checked where new content enters (every
#: construction of a block, so the library, CLI, HTTP routes and import alike); rows read back
#: from a store are never refused (:data:`STORED`).
MAX_JSON_DEPTH = 64

#: Validation context for messages read back from a store (``Message.model_validate(data,
#: context=STORED)``): the entry rules (:data:`MAX_JSON_DEPTH`, block placement, sources) are
#: not applied, so a row stored before a rule existed still loads and exports.
STORED: dict[str, Any] = {"colloquy_stored": True}
#: Validation context for the messages of an imported export (colloquy.rights_import): every
#: entry rule but the placement of blocks by role. An export written before that rule holds
#: rows like those a store already kept (a thinking block in a user message, say); the request
#: repair (colloquy.context.validate) leaves such blocks out of every request, so they are
#: restored as they were rather than refused.
IMPORTED: dict[str, Any] = {"colloquy_imported": True}

#: A block type name: what the Messages API uses (snake_case), so an empty or made-up shape
#: is refused while a block type newer than colloquy is kept whole.
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("colloquy_stored"))


def json_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """What makes ``value`` unfit to store and send as JSON, or None: dicts, lists or content
    blocks nested more than ``limit`` levels (a scalar is level 0, ``{}`` level 1), or a
    number JSON cannot carry (NaN, infinity: ``1e400`` parses as infinity, and a store or an
    export would write it as null). Iterative and stops at the first problem, so a hostile
    10,000-level value costs no recursion and little time."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, BaseModel):
            v = {**v.__dict__, **(v.__pydantic_extra__ or {})}
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        elif isinstance(v, float) and not math.isfinite(v):
            return "holds a number JSON cannot carry (NaN or infinity)"
        else:
            continue
        if depth > limit:
            return _too_deep(limit)
        stack.extend((c, depth + 1) for c in children
                     if isinstance(c, (dict, list, tuple, BaseModel, float)))
    return None


def _too_deep(limit: int) -> str:
    name = " (colloquy.messages.MAX_JSON_DEPTH)" if limit == MAX_JSON_DEPTH else ""
    return f"nests JSON deeper than {limit} levels{name}"


#: A JSON string literal (escapes included) and a run of characters other than brackets: what
#: :func:`json_text_depth` removes to leave the nesting alone.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_text_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in JSON text (``[[]]`` is 2), read without
    parsing it. Why: Python's ``json`` parser recurses, so text nested ~1,000 levels deep
    raises ``RecursionError`` (and a little less passes, then fails whatever recurses next);
    checking the depth first lets a parser see only text it can take. Linear in the text's
    length (two regular-expression passes and one over the brackets), no recursion."""
    if "[" not in text and "{" not in text:
        return 0
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def parse_json(text: str, limit: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)`` for text from outside (an OpenAI ``arguments`` string, an
    import file): ``ValueError`` ("nests JSON deeper than ``limit`` levels") when it nests
    deeper than ``limit``, checked before the parser runs (:func:`json_text_depth`)."""
    if json_text_depth(text) > limit:
        raise ValueError(_too_deep(limit))
    return json.loads(text, **kwargs)


class _Block(BaseModel):
    # extra="allow": a field the API adds to a block later is kept and replayed, not refused.
    model_config = ConfigDict(frozen=True, extra="allow")
    #: Anthropic prompt-cache marker, set only on copies by the cache-aware policy.
    cache_control: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any, info: ValidationInfo) -> Any:
        return _refuse_deep(data, info)


def _refuse_deep(data: Any, info: ValidationInfo) -> Any:
    problem = None if _stored(info) else json_problem(data)
    if problem:
        raise ValueError(f"a content block {problem}")
    return data


#: The image formats both the Anthropic and OpenAI APIs take (Anthropic "Vision" docs).
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: A base64 document is a PDF (Anthropic "PDF support") or plain text (colloquy's OpenAI
#: conversion takes it, as its decoded text).
DOCUMENT_MEDIA_TYPES = frozenset({"application/pdf", "text/plain"})


def _check_source(src: dict[str, Any], what: str, *, media_types: frozenset[str]) -> None:
    """Refuses a source the provider would refuse on every later turn: a base64 source with a
    media type outside ``media_types`` or data that is not base64, a URL that is not http(s)."""
    kind = src.get("type")
    if kind == "base64":
        if src.get("media_type") not in media_types:
            raise ValueError(f"{what} source's media_type must be one of {', '.join(sorted(media_types))}")
        data = src.get("data")
        try:
            if not isinstance(data, str) or not data:
                raise ValueError
            binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise ValueError(f"{what} source's data is not valid base64") from None
    elif kind == "url":
        url = src.get("url")
        if not isinstance(url, str) or not re.match(r"(?i)^https?://[^\s/]+", url):
            raise ValueError(f"{what} source's url must be an http(s) URL")


class TextBlock(_Block):
    """Text. ``citations`` (Anthropic) are the passages the text cites, as the API sent them
    (``char_location``, ``page_location``, ``content_block_location``,
    ``web_search_result_location``, ``search_result_location``), kept for replay and export."""

    type: Literal["text"] = "text"
    text: Text
    citations: list[JSONDict] | None = None


class ImageBlock(_Block):
    """An image, as base64 data (``{"type": "base64", "media_type", "data"}``) or a URL
    (``{"type": "url", "url"}``)."""

    type: Literal["image"] = "image"
    source: JSONDict

    @field_validator("source")
    @classmethod
    def _source_the_apis_take(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if not _stored(info):
            _check_source(v, "an image", media_types=IMAGE_MEDIA_TYPES)
        return v


class DocumentBlock(_Block):
    """A document the model reads (Anthropic ``document``). ``source`` is one of: a PDF as
    ``{"type": "base64", "media_type": "application/pdf", "data"}`` or ``{"type": "url",
    "url"}``, plain text as ``{"type": "text", "media_type": "text/plain", "data"}``, custom
    content as ``{"type": "content", "content": str | [text and image blocks]}``, or an uploaded
    file as ``{"type": "file", "file_id"}``. ``citations: {"enabled": true}`` lets the answer
    cite it; ``title`` and ``context`` are shown to the model, not cited."""

    type: Literal["document"] = "document"
    source: JSONDict
    title: Text | None = None
    context: Text | None = None
    citations: JSONDict | None = None

    @field_validator("source")
    @classmethod
    def _source_has_a_type(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if not isinstance(v.get("type"), str):
            raise ValueError("a document's source needs a type (base64, url, text, content, file)")
        if not _stored(info):
            _check_source(v, "a document", media_types=DOCUMENT_MEDIA_TYPES)
        return v

    @property
    def text(self) -> str:
        """The document's text when it carries text, else "" (a PDF, a URL, a file): a plain
        text source's data, a base64 ``text/*`` source's decoded data (:func:`decoded_text`),
        a content source's text (its string, or its text blocks). The one reading of a
        document's text: token budgets count it, conversions to OpenAI's shape send it."""
        src = self.source
        kind = src.get("type")
        if kind == "text":
            return str(src.get("data", ""))
        if kind == "base64":
            media = src.get("media_type")
            return decoded_text(src.get("data")) if isinstance(media, str) and media.startswith(
                "text/") else ""
        content = src.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(str(b.get("text", "")) for b in content
                             if isinstance(b, dict) and b.get("type") == "text")
        return ""

    @property
    def base64_text(self) -> bool:
        """Whether the source is base64 ``text/*`` data, which no provider takes as such
        (Anthropic's base64 document source is a PDF only: ``Base64PDFSource``)."""
        src = self.source
        return src.get("type") == "base64" and str(src.get("media_type", "")).startswith("text/")

    def sendable(self) -> DocumentBlock:
        """The document as a request carries it: a base64 ``text/*`` source becomes a plain
        text source of its decoded :attr:`text` (what the token budgets counted); any other
        document (and one whose data decodes to nothing) as it is. For requests only
        (colloquy.context.validate): the log keeps the block as it came."""
        text = self.text if self.base64_text else ""
        if not text:
            return self
        return self.model_copy(update={"source": {"type": "text", "media_type": "text/plain",
                                                  "data": text}})


def decoded_text(data: Any) -> str:
    """A base64 text document's text, as UTF-8 ("" when ``data`` is not valid base64, which
    only a row stored before the entry rules can hold; undecodable bytes become U+FFFD)."""
    try:
        raw = base64.b64decode(str(data or ""), validate=True)
    except (ValueError, binascii.Error):
        return ""
    return clean(raw.decode("utf-8", errors="replace"))


class SearchResultBlock(_Block):
    """A search result the application supplies (Anthropic ``search_result``): its ``source``
    (a URL or an id), ``title`` and text ``content``, citable like a document."""

    type: Literal["search_result"] = "search_result"
    source: Text
    title: Text
    content: list[TextBlock]
    citations: JSONDict | None = None

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.content)


class ThinkingBlock(_Block):
    """Claude's extended thinking, with the ``signature`` that lets the API check it was not
    altered: stored and replayed byte for byte (the API refuses a modified block)."""

    type: Literal["thinking"] = "thinking"
    thinking: Text
    signature: Text


class RedactedThinkingBlock(_Block):
    """Thinking the API returned encrypted (``data`` is opaque): replayed unchanged."""

    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: Text


class ToolUseBlock(_Block):
    type: Literal["tool_use"] = "tool_use"
    id: Text
    name: Text
    input: JSONDict = Field(default_factory=dict)


class ServerToolUseBlock(_Block):
    """A call of a tool the provider runs itself (``web_search``, ``web_fetch``,
    ``code_execution``, ...): answered by the provider in the same assistant message, never by
    colloquy's tool loop."""

    type: Literal["server_tool_use"] = "server_tool_use"
    id: Text
    name: Text
    input: JSONDict = Field(default_factory=dict)


class ServerToolResultBlock(_Block):
    """The provider's result of a server tool call: ``web_search_tool_result``,
    ``web_fetch_tool_result``, ``code_execution_tool_result``,
    ``bash_code_execution_tool_result``, ``text_editor_code_execution_tool_result``,
    ``tool_search_tool_result``, and any later ``*_tool_result``. ``content`` is kept exactly
    as the API sent it (search results carry encrypted content that must come back unchanged)."""

    type: str = Field(pattern=r"^[a-z0-9_]+_tool_result$")
    tool_use_id: Text
    content: Annotated[Any, AfterValidator(clean_json)] = None

    @field_validator("type")
    @classmethod
    def _not_a_client_tool_result(cls, v: str) -> str:
        if v == "tool_result":
            raise ValueError("tool_result is a client tool's result (ToolResultBlock)")
        return v


class UnknownBlock(_Block):
    """A block type colloquy does not know (yet): every field kept as it came (its strings
    under the text rule) and replayed to the provider that wrote it; a conversion to another
    provider drops it with a note."""

    type: Text

    @model_validator(mode="before")
    @classmethod
    def _text_rule(cls, data: Any, info: ValidationInfo) -> Any:
        return clean_json(_refuse_deep(data, info))  # depth first: clean_json recurses

    @field_validator("type")
    @classmethod
    def _really_unknown(cls, v: str, info: ValidationInfo) -> str:
        if v in _KNOWN_TYPES or _is_server_result(v):
            raise ValueError(f"a {v!r} block is not an unknown block")
        if not _stored(info) and not _TYPE_NAME.match(v):
            raise ValueError(f"{v!r} is not a content block type (lowercase letters, digits, _)")
        return v

    @property
    def raw(self) -> dict[str, Any]:
        """The block as it came (without colloquy's cache marker)."""
        return self.model_dump(mode="json", exclude={"cache_control"}, exclude_none=True)


_KNOWN_TYPES = frozenset({
    "text", "image", "document", "search_result", "thinking", "redacted_thinking", "tool_use",
    "tool_result", "server_tool_use",
})


def _is_server_result(kind: object) -> bool:
    return isinstance(kind, str) and kind.endswith("_tool_result") and kind != "tool_result"


def _tag(value: Any) -> str:
    """The union member a block validates as: its own type when known, any server tool's
    result as one class, anything else as :class:`UnknownBlock` (never refused)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in _KNOWN_TYPES:
        return str(kind)
    if _is_server_result(kind):
        return "server_tool_result"
    return "unknown"


ToolResultContent = Annotated[
    Union[
        Annotated[TextBlock, Tag("text")],
        Annotated[ImageBlock, Tag("image")],
        Annotated[DocumentBlock, Tag("document")],
        Annotated[SearchResultBlock, Tag("search_result")],
        Annotated[UnknownBlock, Tag("unknown")],
    ],
    Discriminator(lambda v: _tag(v) if _tag(v) in _RESULT_PARTS else "unknown"),
]
"""What a tool result may hold besides a string: text, images, documents, search results (and,
losslessly, any newer kind)."""
_RESULT_PARTS = frozenset({"text", "image", "document", "search_result"})


class ToolResultBlock(_Block):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: Text
    content: Text | list[ToolResultContent] = ""
    is_error: bool = False

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))


ContentBlock = Annotated[
    Union[
        Annotated[TextBlock, Tag("text")],
        Annotated[ImageBlock, Tag("image")],
        Annotated[DocumentBlock, Tag("document")],
        Annotated[SearchResultBlock, Tag("search_result")],
        Annotated[ThinkingBlock, Tag("thinking")],
        Annotated[RedactedThinkingBlock, Tag("redacted_thinking")],
        Annotated[ToolUseBlock, Tag("tool_use")],
        Annotated[ToolResultBlock, Tag("tool_result")],
        Annotated[ServerToolUseBlock, Tag("server_tool_use")],
        Annotated[ServerToolResultBlock, Tag("server_tool_result")],
        Annotated[UnknownBlock, Tag("unknown")],
    ],
    Discriminator(_tag),
]
"""Every block a message may hold. Validation picks the class by ``type``; a type colloquy
does not know becomes an :class:`UnknownBlock` holding it whole."""

THINKING_BLOCKS = (ThinkingBlock, RedactedThinkingBlock)
#: Blocks only the model writes (Anthropic Messages API): never in a user message.
_ASSISTANT_ONLY = (ThinkingBlock, RedactedThinkingBlock, ToolUseBlock, ServerToolUseBlock,
                   ServerToolResultBlock)


def misplaced(block: object, role: str) -> bool:
    """Whether the Messages API refuses ``block`` in a message of ``role`` (a 400 on every
    request that carries it): a block only the model writes (thinking, redacted_thinking,
    tool_use, a server tool's call or result) outside an assistant message, a tool_result
    outside a user message. The one statement of the rule: refused where content enters
    (:class:`Message`), left out of requests built from older rows (colloquy.context.validate)."""
    if isinstance(block, _ASSISTANT_ONLY):
        return role != "assistant"
    return isinstance(block, ToolResultBlock) and role != "user"


class Message(BaseModel):
    """One message: a role and a list of content blocks. A plain string is accepted as
    shorthand for a single text block."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    role: Role
    content: list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _str_is_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [{"type": "text", "text": v}]
        return v

    @field_validator("content")
    @classmethod
    def _blocks_in_their_place(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        """The Messages API's placement rules, applied where content enters (not on stored
        rows, nor on an import: :data:`IMPORTED`): a block the provider refuses in this role
        would fail every later turn. A field validator, not a model one: pydantic runs a
        model's "after" validators again, without context, whenever a built Message is put
        in another model (a StoredMessage, a NewMessage), which refused every stored row
        holding such a block when it was loaded."""
        role = info.data.get("role")
        if role is not None and not _stored(info) and not (info.context or {}).get(
                "colloquy_imported"):
            for b in v:
                if misplaced(b, role):
                    where = "a user" if isinstance(b, ToolResultBlock) else "an assistant"
                    raise ValueError(f"a {b.type} block belongs in {where} message")
        return v

    @classmethod
    def rebuilt(cls, role: Role, content: list[Any]) -> Message:
        """A message colloquy rebuilds from blocks it already holds (a context policy's or a
        request repair's copy of stored messages): the entry rules are not applied again, as
        for rows read from a store (:data:`STORED`), so a row stored before a rule existed
        still reaches the repair that drops what the provider would refuse."""
        return cls.model_validate({"role": role, "content": content}, context=STORED)

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(role="user", content=[TextBlock(text=text)])

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls(role="assistant", content=[TextBlock(text=text)])

    @property
    def text(self) -> str:
        """The concatenated text blocks (tool blocks excluded)."""
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]

    @property
    def tool_results(self) -> list[ToolResultBlock]:
        return [b for b in self.content if isinstance(b, ToolResultBlock)]

    @property
    def starts_turn(self) -> bool:
        """True for a user message that carries the user's own words (not only tool results).

        Context policies cut the log only before such messages, so a tool exchange
        (tool_use + tool_result) is never split.
        """
        if self.role != "user":
            return False
        for b in self.content:  # a loop, not any(): called for every message of every window
            if not isinstance(b, ToolResultBlock):
                return True
        return False

    def to_anthropic(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


#: Meta key of a stored reply whose usage is colloquy's estimate (the provider sent none):
#: stores keep usage in plain token columns, the flag travels in meta.
USAGE_ESTIMATED = "usage_estimated"


class StoredMessage(BaseModel):
    """A message with its place in a conversation's append-only log."""

    model_config = ConfigDict(frozen=True)
    conversation_id: Text
    seq: int
    message: Message
    created_at: float = Field(default_factory=time.time)
    #: Set on assistant messages: what the model call that produced it cost.
    usage: Usage | None = None
    model: Text | None = None
    #: Dollars at the prices in force when the reply was stored (None if the price is unknown).
    cost_usd: float | None = None
    #: Free-form metadata (e.g. a source turn id, a guard verdict, an idempotency key).
    meta: JSONDict = Field(default_factory=dict)

    @property
    def role(self) -> Role:
        return self.message.role

    @model_validator(mode="after")
    def _estimated_usage(self) -> StoredMessage:
        """Whatever the store, a reply whose usage was estimated reads back as estimated."""
        if self.usage is not None and self.meta.get(USAGE_ESTIMATED) and not self.usage.estimated:
            object.__setattr__(self, "usage", self.usage.model_copy(update={"estimated": True}))
        return self


MessageList = TypeAdapter(list[Message])
"""Serialises or validates a whole list of messages at once."""


def system_text(system: str | list[TextBlock]) -> str:
    if isinstance(system, str):
        return system
    return "\n\n".join(b.text for b in system)
