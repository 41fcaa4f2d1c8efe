"""The providers' rules for what a request may carry, beyond the shape of the conversation.

A stored log can hold things a provider refuses: tool-call ids written by another provider
(``functions.lookup:0`` from llama.cpp or vLLM servers, repeated every turn), more cache
breakpoints than Anthropic allows, whitespace-only text from old data. The log is never edited:
the *request* built from it is made to obey these rules, the same way for every adapter, by
:func:`colloquy.context.validate.repair_request` (the one place requests are repaired).

Rules, with their sources:

* Tool-call ids match ``^[a-zA-Z0-9_-]{1,40}$`` and are unique within the request. Anthropic
  refuses a ``tool_use.id`` outside ``^[a-zA-Z0-9_-]+$`` ("String should match pattern") and
  duplicate ids ("tool_use ids must be unique"); OpenAI refuses a ``tool_calls[].id`` longer
  than 40 characters ("string too long. Expected a string with maximum length 40"). One mapping
  that satisfies both is used for every provider, so a conversation can move between them.
* At most 4 ``cache_control`` breakpoints in a request, system and messages together (Anthropic:
  "A maximum of 4 blocks with cache_control may be provided").
* Text blocks, the system prompt's included, hold non-whitespace text (Anthropic: "text content
  blocks must contain non-whitespace text").
* A final assistant message (a prefill) does not end with whitespace (Anthropic: "final
  assistant content cannot end with trailing whitespace").

Text that is not valid Unicode (a lone surrogate, which the SDKs cannot encode) never reaches a
request: the value types replace it with U+FFFD when they are built, stored rows included
(:mod:`colloquy.text`), so no request-level pass is needed.

The id mapping is deterministic (it depends only on the request's messages, read from the
start), so the same stored log always gives the same request bytes and the prompt cache prefix
stays stable from turn to turn; ids already valid and unique are sent unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from ..messages import ContentBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock

#: The id pattern every provider accepts (Anthropic's pattern, OpenAI's 40-character cap).
TOOL_ID_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,40}")
MAX_TOOL_ID_LENGTH = 40
#: Anthropic refuses a request with more cache_control blocks than this.
MAX_BREAKPOINTS = 4
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def valid_tool_id(tool_id: str) -> bool:
    return TOOL_ID_PATTERN.fullmatch(tool_id) is not None


def _sanitised(tool_id: str) -> str:
    """The id with every character outside the pattern replaced by ``_``, cut to fit (a short
    hash of the original keeps two long ids that share a prefix apart)."""
    base = _BAD_ID_CHARS.sub("_", tool_id) or "toolu"
    if len(base) > MAX_TOOL_ID_LENGTH:
        digest = hashlib.sha1(tool_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        base = f"{base[: MAX_TOOL_ID_LENGTH - 9]}_{digest}"
    return base


def _unique(base: str, used: set[str]) -> str:
    if base not in used:
        return base
    n = 2
    while True:
        suffix = f"_{n}"
        candidate = base[: MAX_TOOL_ID_LENGTH - len(suffix)] + suffix
        if candidate not in used:
            return candidate
        n += 1


def tool_id_problems(messages: Sequence[Message]) -> list[str]:
    """Ids outside the pattern, and ids used by more than one tool_use of the request."""
    out: list[str] = []
    seen: set[str] = set()
    for i, m in enumerate(messages):
        for u in m.tool_uses:
            if not valid_tool_id(u.id):
                out.append(f"message {i}: tool_use id {u.id!r} does not match "
                           f"{TOOL_ID_PATTERN.pattern}")
            if u.id in seen:
                out.append(f"message {i}: tool_use id {u.id!r} is not unique in the request")
            seen.add(u.id)
    return out


def map_tool_ids(messages: Sequence[Message]) -> tuple[list[Message], bool]:
    """Give every tool_use a valid id unique in the request, and its tool_result the same one.

    A tool_result is paired with a tool_use of the message just before it (the conversation
    rule ``repair`` establishes first); when one message repeats an id, its results pair in
    order. Returns the messages and whether any id changed.
    """
    if not any(m.tool_uses for m in messages):
        return list(messages), False
    used: set[str] = set()
    out: list[Message] = []
    changed = False
    pending: dict[str, list[str]] = {}  # original id -> new ids of the message just before
    for m in messages:
        blocks: list[ContentBlock] = []
        touched = False
        asked: dict[str, list[str]] = {}
        for b in m.content:
            if isinstance(b, ToolResultBlock) and pending.get(b.tool_use_id):
                new = pending[b.tool_use_id].pop(0)
                if new != b.tool_use_id:
                    b, touched = b.model_copy(update={"tool_use_id": new}), True
            elif isinstance(b, ToolUseBlock):
                new = _unique(b.id if valid_tool_id(b.id) else _sanitised(b.id), used)
                used.add(new)
                asked.setdefault(b.id, []).append(new)
                if new != b.id:
                    b, touched = b.model_copy(update={"id": new}), True
            blocks.append(b)
        pending = asked
        changed = changed or touched
        out.append(Message.rebuilt(m.role, blocks) if touched else m)
    return out, changed


def _marked(block: Any) -> int:
    n = 1 if getattr(block, "cache_control", None) is not None else 0
    if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
        n += sum(b.cache_control is not None for b in block.content)
    return n


def count_breakpoints(system: Sequence[TextBlock], messages: Sequence[Message]) -> int:
    """cache_control markers in a request: system blocks, message blocks, tool_result parts."""
    return sum(_marked(b) for b in system) + sum(_marked(b) for m in messages for b in m.content)


def _unmark(block: Any, keep: int) -> tuple[Any, int]:
    """The block with its markers past the first ``keep`` (counted from its end) removed;
    returns it and how many it still has."""
    if block.cache_control is not None:  # the block's own marker ends after its parts
        if keep > 0:
            keep -= 1
        else:
            block = block.model_copy(update={"cache_control": None})
    if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
        parts = list(block.content)
        for k in range(len(parts) - 1, -1, -1):
            if parts[k].cache_control is not None:
                if keep > 0:
                    keep -= 1
                else:
                    parts[k] = parts[k].model_copy(update={"cache_control": None})
        block = block.model_copy(update={"content": parts})
    return block, keep


def limit_breakpoints(
    system: Sequence[TextBlock], messages: Sequence[Message], limit: int = MAX_BREAKPOINTS
) -> tuple[list[TextBlock], list[Message], bool]:
    """Keep the ``limit`` latest cache breakpoints and drop the older ones.

    Why the latest: a breakpoint caches the whole prefix up to it, so the later one covers
    more; an older one only helps when a later prefix has changed, which the newer marks (a
    policy's "previous request" and "newest message") are placed to avoid.
    """
    if count_breakpoints(system, messages) <= limit:
        return list(system), list(messages), False
    keep = limit
    new_messages: list[Message] = []
    for m in reversed(messages):
        blocks: list[ContentBlock] = []
        for b in reversed(m.content):
            b, keep = _unmark(b, keep)
            blocks.append(b)
        blocks.reverse()
        new_messages.append(Message.rebuilt(m.role, blocks))
    new_messages.reverse()
    new_system: list[TextBlock] = []
    for s in reversed(system):
        s, keep = _unmark(s, keep)
        new_system.append(s)
    new_system.reverse()
    return new_system, new_messages, True


def system_problems(system: Sequence[TextBlock]) -> list[str]:
    return [f"system block {i} has no non-whitespace text"
            for i, b in enumerate(system) if not b.text.strip()]


def trailing_whitespace(messages: Sequence[Message]) -> bool:
    """True when the request ends with an assistant message whose last text ends in whitespace."""
    if not messages or messages[-1].role != "assistant":
        return False
    last = messages[-1].content[-1] if messages[-1].content else None
    return isinstance(last, TextBlock) and last.text != last.text.rstrip()


def trim_final_assistant(messages: list[Message]) -> bool:
    """Strip trailing whitespace from a final assistant message, in place; True if changed."""
    if not trailing_whitespace(messages):
        return False
    last = messages[-1]
    block = last.content[-1]
    assert isinstance(block, TextBlock)
    messages[-1] = Message.rebuilt("assistant", [
        *last.content[:-1], block.model_copy(update={"text": block.text.rstrip()})])
    return True


