"""The basic policies: the full history, a rolling window of turns, a token budget."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..tokens import estimate_message, estimate_tools
from .base import Context, ContextInput, from_stored, iter_turns_backwards, turn_start_index


@dataclass(frozen=True)
class FullHistory:
    """Send everything. Simple and exact, and each turn costs more than the last."""

    def build(self, inp: ContextInput) -> Context:
        return from_stored(inp.history, inp.system)


@dataclass(frozen=True)
class RollingWindow:
    """The last ``turns`` turns (a turn starts at a user message with the user's own words, and
    holds the replies and tool exchanges that follow it). Never splits a tool exchange, and the
    context always starts with a user message."""

    turns: int = 20

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise ConfigError(f"a rolling window needs at least 1 turn, not {self.turns}")

    def build(self, inp: ContextInput) -> Context:
        start = turn_start_index(inp.history, self.turns)
        return from_stored(inp.history[start:], inp.system)


def fixed_tokens(inp: ContextInput) -> int:
    """Raw tokens every request of this chat carries whatever the history: persona, tools."""
    return inp.counter.raw(inp.system, (), extra=estimate_tools(inp.tools))


@dataclass(frozen=True)
class TokenBudget:
    """The newest whole turns whose estimated input (system prompt and tools counted) fits under
    ``max_input_tokens``. The newest turn is always kept, even alone over budget, with a note:
    dropping the question itself would be worse than a refused request."""

    max_input_tokens: int

    def __post_init__(self) -> None:
        if self.max_input_tokens < 1:
            raise ConfigError(f"max_input_tokens must be positive, not {self.max_input_tokens}")

    def build(self, inp: ContextInput) -> Context:
        used = fixed_tokens(inp)
        limit = self.max_input_tokens
        scale = inp.counter.factor(inp.model)
        start = len(inp.history)
        for lo, hi in iter_turns_backwards(inp.history):
            cost = sum(estimate_message(sm.message) for sm in inp.history[lo:hi])
            if (used + cost) * scale > limit and start < len(inp.history):
                break
            used += cost
            start = lo
        ctx = from_stored(inp.history[start:], inp.system)
        if used * scale > limit:
            ctx.notes.append(
                f"the newest turn alone (~{round(used * scale)} tokens) is over the "
                f"{limit}-token budget; sending it anyway"
            )
        return ctx
