"""The size rule: no request is ever built over the model's context window.

Policies choose what the model sees by their own measure (turns, a token budget, a summary);
none of them may be trusted to stay under the window, least of all a user's own policy or
a rolling window with one pasted message larger than the model can read. So the
engine applies :func:`fit_to_window` once, to whatever the policy built, before the request is
repaired and sent:

1. If the request's calibrated estimate fits ``window - max_tokens`` (with 10% headroom for the
   estimate's error), nothing changes: the usual case costs one sum over memoised estimates.
2. Otherwise the oldest turns are dropped, whole (cuts happen only at turn starts, so no tool
   exchange is split), until the rest fits; the newest turn is always kept.
3. If the newest turn alone is over, its largest texts (message text or tool results) are cut
   in the middle, with a marker saying how much was left out, down to 60% of the room (so an
   estimate even 1.5x low still fits; tests/test_tokens_scripts.py allows 0.75x-1.5x, and a
   pathological text such as "x x x ..." sits at the edge).

Each step adds a note for the caller. The stored log is never changed (the whole text stays
in it), so the chat goes on after an oversized turn and later turns are answered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import ContextTooLongError
from ..messages import ContentBlock, Message, TextBlock, ToolResultBlock
from ..tokens import estimate_message, estimate_messages, estimate_text, estimate_tools
from .base import Context, ContextInput

#: Share of the room the estimate may fill: the rest absorbs the estimate's error.
FIT_HEADROOM = 0.9
#: Share of the room a cut message is brought down to (an estimate 1.5x low still fits).
CUT_HEADROOM = 0.6
#: Text that is kept of a cut block at least, so the model still sees what it was.
MIN_KEPT_CHARS = 200


def cut_marker(removed: int, window: int) -> str:
    return (f"\n\n[... {removed:,} characters cut here by colloquy: this message is larger "
            f"than the model's context window ({window:,} tokens); the conversation log keeps "
            "the whole text ...]\n\n")


def _cut_text(text: str, keep: int, window: int) -> tuple[str, int]:
    """``text`` without its middle, and how many characters went: two thirds of ``keep``
    characters from the start, the rest from the end (a pasted log or document keeps its
    beginning and its latest lines)."""
    keep = max(MIN_KEPT_CHARS, keep)
    if keep >= len(text):
        return text, 0
    head = keep * 2 // 3
    tail = keep - head
    removed = len(text) - keep
    return text[:head] + cut_marker(removed, window) + (text[-tail:] if tail else ""), removed


def _text_of(block: ContentBlock) -> str | None:
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ToolResultBlock) and isinstance(block.content, str):
        return block.content
    return None


def _with_text(block: ContentBlock, text: str) -> ContentBlock:
    if isinstance(block, TextBlock):
        return block.model_copy(update={"text": text})
    return block.model_copy(update={"content": text})


def _cut_largest(messages: list[Message], excess: int, window: int) -> tuple[list[Message], int]:
    """Cut the largest text of ``messages`` by about ``excess`` raw tokens. Returns the
    messages and the characters removed (0 when nothing is left to cut)."""
    best: tuple[int, int, int] | None = None  # (tokens, message index, block index)
    for i in range(len(messages)):
        for k, block in enumerate(messages[i].content):
            text = _text_of(block)
            if text is not None and len(text) > MIN_KEPT_CHARS:
                tokens = estimate_text(text)
                if best is None or tokens > best[0]:
                    best = (tokens, i, k)
    if best is None:
        return messages, 0
    tokens, i, k = best
    block = messages[i].content[k]
    text = _text_of(block) or ""
    keep_share = max(0.0, (tokens - excess) / tokens)
    new_text, removed = _cut_text(text, int(len(text) * keep_share), window)
    if not removed:
        return messages, 0
    content = list(messages[i].content)
    content[k] = _with_text(block, new_text)
    out = list(messages)
    out[i] = Message.rebuilt(messages[i].role, content)
    return out, removed


def _turn_starts(messages: Sequence[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if m.starts_turn]


def fit_to_window(ctx: Context, inp: ContextInput, window: int) -> Context:
    """Make ``ctx`` fit ``window`` tokens (with ``inp.max_tokens`` kept for the reply), in
    place; returns it. Raises :class:`ContextTooLongError` when the parts every request
    carries (persona, memory blocks, tools) are over the window by themselves."""
    counter = inp.counter
    # Calibration may only make the estimate larger here: a factor below 1 learnt from small
    # requests (where fixed overheads dominate) must not let an oversized request through.
    scale = max(1.0, counter.factor(inp.model))
    room = window - inp.max_tokens
    fixed = counter.raw(ctx.system, (), extra=estimate_tools(inp.tools))
    if (fixed + estimate_messages(ctx.messages)) * scale <= room * FIT_HEADROOM:
        return ctx  # the usual case: no list of sizes built
    sizes = list(map(estimate_message, ctx.messages))
    limit = room * FIT_HEADROOM / scale - fixed  # raw tokens the messages may take
    if limit <= 0:
        raise ContextTooLongError(
            f"the persona, memory blocks and tools alone (~{math.ceil(fixed * scale):,} tokens) "
            f"leave no room in the model's context window ({window:,} tokens, "
            f"{inp.max_tokens:,} kept for the reply)")
    messages = list(ctx.messages)
    sources = list(ctx.sources) if ctx.sources else [[] for _ in messages]
    starts = _turn_starts(messages) or [0]
    suffix = [0] * (len(sizes) + 1)  # suffix[i]: raw tokens of messages[i:]
    for i in range(len(sizes) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + sizes[i]
    # The oldest turn start from which the rest fits; else the newest turn alone.
    cut_at = next((s for s in starts if suffix[s] <= limit), starts[-1])
    if cut_at > 0:
        messages, sources = messages[cut_at:], sources[cut_at:]
        ctx.notes.append(
            f"left out the {cut_at} oldest message(s) of the context to fit the model's "
            f"context window ({window:,} tokens)")
    if suffix[cut_at] > limit:
        target = room * CUT_HEADROOM / scale - fixed
        removed = 0
        for _ in range(16):  # each pass cuts one block; a turn has few large ones
            raw = sum(estimate_message(m) for m in messages)
            if raw <= target:
                break
            messages, n = _cut_largest(messages, math.ceil(raw - target), window)
            if not n:
                break
            removed += n
        if removed:
            ctx.notes.append(
                f"cut {removed:,} characters from the newest turn to fit the model's context "
                f"window ({window:,} tokens); the log keeps the whole text")
    ctx.messages, ctx.sources = messages, sources
    return ctx
