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

import json
import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from .text import JSONDict, Text
from .usage import Usage

Role = Literal["user", "assistant"]


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Anthropic prompt-cache marker, set only on copies by the cache-aware policy.
    cache_control: dict[str, Any] | None = None


class TextBlock(_Block):
    type: Literal["text"] = "text"
    text: Text


class ImageBlock(_Block):
    """An image, as base64 data (``{"type": "base64", "media_type", "data"}``) or a URL
    (``{"type": "url", "url"}``)."""

    type: Literal["image"] = "image"
    source: JSONDict


class ToolUseBlock(_Block):
    type: Literal["tool_use"] = "tool_use"
    id: Text
    name: Text
    input: JSONDict = Field(default_factory=dict)


class ToolResultBlock(_Block):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: Text
    content: Text | list[TextBlock | ImageBlock] = ""
    is_error: bool = False

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))


ContentBlock = Annotated[
    Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock], Field(discriminator="type")
]


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


# ---------------------------------------------------------------------------------------------
# OpenAI chat-completions shape
# ---------------------------------------------------------------------------------------------


def _image_url(block: ImageBlock) -> str:
    src = block.source
    if src.get("type") == "url":
        return str(src["url"])
    return f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"


def to_openai_messages(
    system: str | list[TextBlock], messages: list[Message]
) -> list[dict[str, Any]]:
    """Convert (system, messages) to the OpenAI chat-completions ``messages`` list.

    tool_use blocks become the assistant's ``tool_calls``; each tool_result becomes a
    ``role: "tool"`` message placed right after the assistant message that asked for it, which
    is where OpenAI requires it. cache_control markers have no OpenAI equivalent and are dropped.
    """
    out: list[dict[str, Any]] = []
    sys_text = system_text(system)
    if sys_text:
        out.append({"role": "system", "content": sys_text})
    for m in messages:
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            calls = [
                {
                    "id": b.id,
                    "type": "function",
                    "function": {"name": b.name, "arguments": json.dumps(b.input)},
                }
                for b in m.tool_uses
            ]
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            continue
        for r in m.tool_results:
            content = r.text
            if r.is_error:
                content = f"[tool error] {content}"
            out.append({"role": "tool", "tool_call_id": r.tool_use_id, "content": content})
        parts: list[dict[str, Any]] = []
        for b in m.content:
            if isinstance(b, TextBlock):
                parts.append({"type": "text", "text": b.text})
            elif isinstance(b, ImageBlock):
                parts.append({"type": "image_url", "image_url": {"url": _image_url(b)}})
        if not parts:
            continue
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out
