"""Prompt-cache-aware trimming for Anthropic models.

Why: Anthropic bills a prompt prefix it has cached (5-minute TTL) at 0.1x the input price, and a
prefix it writes to the cache at 1.25x. A rolling window that drops one old turn per new turn
changes the very first message every turn, so the whole replayed history is re-billed at full
price each time. This module keeps the replayed prefix byte-identical between trims:

* :class:`SteppedWindow` trims in steps: it cuts the log only at points of a fixed grid of
  cumulative token positions (multiples of ``high - low`` raw tokens from the start of the
  conversation). While the kept history stays under the high-water mark the cut point does not
  move; when it passes the mark the cut jumps one grid step forward, leaving about the low-water
  mark. The rule depends only on the stored messages and the offline estimator, so every
  process picks the same cut.
* :func:`add_breakpoints` puts ``cache_control: {"type": "ephemeral"}`` on the persona block, on
  the previous request's last user message (the stable end of the history, already cached) and
  on the final message (written for the next turn) - at most 4 in a request, only where the
  prefix reaches the model's minimum cacheable length, and only for Anthropic models.
* :class:`CacheAwareWindow` is the policy that does both; :class:`CacheBreakpoints` adds the
  breakpoints to any other policy's context.

Minimum cacheable lengths (Anthropic's prompt-caching docs): 4,096 tokens for Claude Opus 4.6,
Opus 4.5 and Haiku 4.5; 2,048 for Haiku 3.5 and Haiku 3; 1,024 for Sonnet 4.6, Sonnet 4.5,
Opus 4.1, Opus 4, Sonnet 4 and Sonnet 3.7. A prefix below it is simply not cached (no error).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..messages import THINKING_BLOCKS, Message, StoredMessage, TextBlock
from ..tokens import REQUEST_OVERHEAD, estimate_message, estimate_text, estimate_tools
from .base import Context, ContextInput, ContextPolicy, from_stored
from .wire import MAX_BREAKPOINTS, count_breakpoints

EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}
#: Grid steps derived from a varying budget are rounded down to a multiple of this (raw tokens).
GRID_QUANTUM = 512

#: Minimum cacheable prompt length per model-id prefix (longest prefix wins).
MIN_CACHEABLE: dict[str, int] = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-4-6": 1024,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
}
#: For a Claude model not in the table (a newer one): the largest known minimum, so a
#: breakpoint is never placed where it could not cache.
DEFAULT_MIN_CACHEABLE = 4096


def _bare(model: str | None) -> str:
    name = model or ""
    provider, sep, rest = name.partition(":")
    return rest if sep and provider == "anthropic" else name


def is_anthropic(model: str | None) -> bool:
    """True for Claude models (``claude-...`` or ``anthropic:claude-...``)."""
    return _bare(model).startswith("claude")


def min_cacheable_tokens(model: str | None) -> int | None:
    """The model's minimum cacheable prefix, or None when the model has no Anthropic cache."""
    if not is_anthropic(model):
        return None
    name = _bare(model)
    best = max((k for k in MIN_CACHEABLE if name.startswith(k)), key=len, default=None)
    return MIN_CACHEABLE[best] if best else DEFAULT_MIN_CACHEABLE


# ---------------------------------------------------------------------------------------------
# Breakpoints
# ---------------------------------------------------------------------------------------------


def _mark_last_block(m: Message) -> Message:
    """``m`` with a breakpoint on its last block that can carry one (thinking blocks cannot:
    the API refuses cache_control on them, and they must be replayed unmodified)."""
    blocks = list(m.content)
    for k in range(len(blocks) - 1, -1, -1):
        if not isinstance(blocks[k], THINKING_BLOCKS):
            blocks[k] = blocks[k].model_copy(update={"cache_control": dict(EPHEMERAL)})
            return Message.rebuilt(m.role, blocks)
    return m


def add_breakpoints(
    ctx: Context, inp: ContextInput, *, volatile_last: bool = False, min_tokens: int | None = None
) -> Context:
    """Mark the cacheable prefixes of ``ctx`` (in place, returned for chaining).

    Breakpoints, in order: the persona (first system block); the stable end of the history
    (the user message that ended the previous request; with ``volatile_last``, e.g. when the
    newest message carries per-turn excerpts, the message just before the newest one); the
    newest message (unless ``volatile_last`` or ``ctx.volatile_last``, which a composed policy
    sets when it put per-turn blocks in the newest message). Each only where the calibrated prefix up to it
    reaches the model's minimum cacheable length, never more than 4 in the request. Nothing is
    marked for a non-Anthropic model.
    """
    minimum = min_tokens if min_tokens is not None else min_cacheable_tokens(inp.model)
    if minimum is None or not is_anthropic(inp.model):
        return ctx
    volatile_last = volatile_last or ctx.volatile_last
    scale = inp.counter.factor(inp.model)
    free = MAX_BREAKPOINTS - count_breakpoints(ctx.system, ctx.messages)
    # Prefix sizes: tools, then system blocks, then messages (the API's cache order).
    head = REQUEST_OVERHEAD + estimate_tools(inp.tools)
    system = list(ctx.system)
    if system and free > 0:
        persona_tokens = head + estimate_text(system[0].text)
        if math.ceil(persona_tokens * scale) >= minimum and system[0].cache_control is None:
            system[0] = system[0].model_copy(update={"cache_control": dict(EPHEMERAL)})
            free -= 1
    messages = list(ctx.messages)
    cum: list[int] = []
    total = head + sum(estimate_text(b.text) for b in system)
    for m in messages:
        total += estimate_message(m)
        cum.append(total)
    targets: list[int] = []
    last = len(messages) - 1
    if last >= 1:
        if volatile_last:
            targets.append(last - 1)
        else:
            prev_user = next((i for i in range(last - 1, -1, -1) if messages[i].role == "user"), None)
            if prev_user is not None:
                targets.append(prev_user)
    if last >= 0 and not volatile_last:
        targets.append(last)
    for i in targets:
        if free <= 0:
            break
        if math.ceil(cum[i] * scale) < minimum or messages[i].content[-1].cache_control is not None:
            continue
        marked = _mark_last_block(messages[i])
        if marked is not messages[i]:
            messages[i] = marked
            free -= 1
    ctx.system, ctx.messages = system, messages
    return ctx


@dataclass
class CacheBreakpoints:
    """Wraps any policy and marks its context's cacheable prefixes (see :func:`add_breakpoints`)."""

    policy: ContextPolicy
    volatile_last: bool = False
    min_tokens: int | None = None

    def build(self, inp: ContextInput) -> Context:
        return add_breakpoints(self.policy.build(inp), inp, volatile_last=self.volatile_last,
                               min_tokens=self.min_tokens)


# ---------------------------------------------------------------------------------------------
# Stepped trimming
# ---------------------------------------------------------------------------------------------


class _Positions:
    """Cumulative raw token positions of one conversation's messages, extended incrementally."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.cum: list[int] = []  # cum[i]: raw tokens of messages [0..i]

    def update(self, history: Sequence[StoredMessage]) -> None:
        n = len(self.seqs)
        if n > len(history) or (n and history[n - 1].seq != self.seqs[-1]) or (
            n and history[0].seq != self.seqs[0]
        ):
            self.seqs, self.cum, n = [], [], 0  # not an extension of what we saw: restart
        total = self.cum[-1] if self.cum else 0
        for sm in history[n:]:
            total += estimate_message(sm.message)
            self.seqs.append(sm.seq)
            self.cum.append(total)

    def before(self, i: int) -> int:
        """Raw tokens of the messages before index i."""
        return self.cum[i - 1] if i > 0 else 0


@dataclass
class SteppedWindow:
    """Where the verbatim history starts, trimmed in steps on a fixed grid (module docstring).

    ``high_water``: the most tokens (calibrated) the kept messages may take; None means the
    budget passed to :meth:`window_start`. ``low_water``: what is left right after a trim, as a
    share of ``high_water`` (<= 1.0) or in tokens. Usable as a ``RecentWindow`` of the composite.
    """

    high_water: int | None = None
    low_water: float | int = 0.5
    #: Grid step in raw tokens; None: ``high_water - low_water``. Fix it when the budget passed
    #: in varies from turn to turn, so the grid (and the cut points) stay put.
    step_tokens: int | None = None
    max_conversations: int = 64
    _positions: OrderedDict[str, Any] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.high_water is not None and self.high_water < 1:
            raise ConfigError(f"high_water must be positive, not {self.high_water}")
        if self.low_water <= 0:
            raise ConfigError(f"low_water must be positive, not {self.low_water}")

    def step(self, high: int) -> int:
        if self.step_tokens is not None:
            return self.step_tokens
        low = int(high * self.low_water) if self.low_water <= 1.0 else int(self.low_water)
        if not 0 < low < high:
            raise ConfigError(f"low_water ({low}) must be below high_water ({high})")
        if self.high_water is None:
            # The budget handed in may wobble from turn to turn (other parts take more or
            # less): a coarse grid keeps the cut points put through small changes.
            return max(GRID_QUANTUM, (high - low) // GRID_QUANTUM * GRID_QUANTUM)
        return high - low

    def _positions_for(self, inp: ContextInput) -> _Positions:
        key = inp.conversation_id or f"anon-{id(inp.history)}"
        with self._lock:
            pos = self._positions.get(key)
            if pos is None:
                pos = self._positions[key] = _Positions()
                while len(self._positions) > self.max_conversations:
                    self._positions.popitem(last=False)
            self._positions.move_to_end(key)
        pos.update(inp.history)
        return pos

    def window_start(self, inp: ContextInput, budget: int) -> int:
        history = inp.history
        if not history:
            return 0
        high = self.high_water if self.high_water is not None else budget
        high = min(high, budget)
        step = self.step(self.high_water if self.high_water is not None else budget)
        scale = inp.counter.factor(inp.model)
        pos = self._positions_for(inp)
        total = pos.cum[-1]
        # The newest turn is always kept: the cut can go no further than its start.
        newest = len(history) - 1
        while newest > 0 and not history[newest].message.starts_turn:
            newest -= 1
        k = 0
        if math.ceil(total * scale) > high:
            k = math.ceil((total - high / scale) / step)
        cut = k * step
        i = bisect_left(pos.cum, cut + 1) if cut else 0  # first message whose start >= cut
        while i < len(history) and pos.before(i) < cut:
            i += 1
        while i < newest and not history[i].message.starts_turn:
            i += 1
        return min(i, newest)


@dataclass
class CacheAwareWindow:
    """A token-budget window that trims in steps and marks cache breakpoints.

    ``CacheAwareWindow(8000)``: the persona, tools and kept turns stay under 8,000 tokens; when
    the history passes that, whole old turns are dropped down to about ``low_water`` (half by
    default) in one step, and the prefix then stays byte-identical until the next step.
    """

    max_input_tokens: int
    low_water: float | int = 0.5
    breakpoints: bool = True
    window: SteppedWindow = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_input_tokens < 1:
            raise ConfigError(f"max_input_tokens must be positive, not {self.max_input_tokens}")
        low = (int(self.max_input_tokens * self.low_water) if self.low_water <= 1.0
               else int(self.low_water))
        if not 0 < low < self.max_input_tokens:
            raise ConfigError(f"low_water ({low}) must be below max_input_tokens "
                              f"({self.max_input_tokens})")
        # The grid depends on the configuration only, not on calibration: stable cut points.
        self.window = SteppedWindow(low_water=self.low_water,
                                    step_tokens=self.max_input_tokens - low)

    def build(self, inp: ContextInput) -> Context:
        scale = inp.counter.factor(inp.model)
        fixed = inp.counter.raw(inp.system, (), extra=estimate_tools(inp.tools))
        budget = max(1, self.max_input_tokens - math.ceil(fixed * scale))
        start = self.window.window_start(inp, budget)
        ctx = from_stored(inp.history[start:], inp.system)
        used = fixed + sum(estimate_message(sm.message) for sm in inp.history[start:])
        if math.ceil(used * scale) > self.max_input_tokens:
            ctx.notes.append(f"the newest turn alone (~{math.ceil(used * scale)} tokens) is over "
                             f"the {self.max_input_tokens}-token budget; sending it anyway")
        return add_breakpoints(ctx, inp) if self.breakpoints else ctx


__all__ = [
    "CacheAwareWindow",
    "CacheBreakpoints",
    "MIN_CACHEABLE",
    "SteppedWindow",
    "add_breakpoints",
    "is_anthropic",
    "min_cacheable_tokens",
]
