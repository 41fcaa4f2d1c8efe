"""What a context policy is: a function from the stored log to what the model sees.

Policies never write. A policy computes a :class:`Context` from a :class:`ContextInput`;
anything it derives (a summary, extracted facts) is returned in ``Context.derived`` and persisted
by the engine, so the stored log stays the single source of truth.

Cuts happen only at *turn starts*: a user message carrying the user's own words. A tool exchange
(assistant tool_use blocks and the next user message's tool_result blocks) lies inside a turn, so
no cut can split it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..messages import Message, StoredMessage, TextBlock
from ..models.base import ToolSpec
from ..tokens import TokenCounter, counter as default_counter


@dataclass
class ContextInput:
    """Everything a policy may look at. ``history`` is the whole log, oldest first, ending with
    the message the model must answer."""

    history: Sequence[StoredMessage]
    system: str = ""
    model: str = ""
    tools: Sequence[ToolSpec] = ()
    max_tokens: int = 1024
    user_id: str | None = None
    conversation_id: str | None = None
    counter: TokenCounter = field(default_factory=lambda: default_counter)
    #: The store, for policies that read derived records (summaries, facts). Read only.
    store: Any = None
    #: The generation of the conversation (see Conversation.generation): a part that caches
    #: something per conversation (a recall index, a summary) keeps it only for this one.
    conversation_generation: str | None = None

    @property
    def query(self) -> str:
        """The text of the newest turn start: what the user is asking now."""
        for sm in reversed(self.history):
            if sm.message.starts_turn:
                return sm.message.text
        return ""


@dataclass
class Context:
    """What the model will see, plus why."""

    system: list[TextBlock]
    messages: list[Message]
    #: For each message in ``messages``, the stored sequence numbers it came from (empty for a
    #: synthetic message such as a summary). Lets tests and benches check what was included.
    sources: list[list[int]] = field(default_factory=list)
    #: Warnings for the caller (e.g. a summariser failure and its fallback).
    notes: list[str] = field(default_factory=list)
    #: Derived records for the engine to persist (summaries, facts).
    derived: list[Any] = field(default_factory=list)
    #: For composed contexts: the stored seqs each part (summary, facts, recall) carries.
    part_sources: dict[str, list[int]] = field(default_factory=dict)
    #: The newest message carries per-turn blocks (recalled excerpts, new facts) that the next
    #: request will not repeat: a cache breakpoint there would write what is never read again
    #: (see cache.add_breakpoints).
    volatile_last: bool = False
    #: For composed contexts: each part's calibrated token estimate.
    part_tokens: dict[str, int] = field(default_factory=dict)
    #: For composed contexts: the ids of the derived records each part used (facts, summary),
    #: so the context can be shown again later (colloquy.context.seen).
    part_records: dict[str, list[str]] = field(default_factory=dict)
    #: The thinking budget this context's request may use, set by the engine after the policy
    #: (colloquy.context.thinking); None: no thinking.
    thinking: int | None = None

    @property
    def included_seqs(self) -> set[int]:
        return {s for group in self.sources for s in group}


@runtime_checkable
class ContextPolicy(Protocol):
    """A policy builds the context of one request."""

    def build(self, inp: ContextInput) -> Context: ...


def turn_start_index(history: Sequence[StoredMessage], turns: int) -> int:
    """Index of the message that starts the ``turns``-th newest turn (0 if there are fewer).

    Walks back from the end, so the cost depends on the window, not on the log's length.
    """
    if turns <= 0:
        return len(history)
    seen = 0
    for i in range(len(history) - 1, -1, -1):
        if history[i].message.starts_turn:
            seen += 1
            if seen == turns:
                return i
    return 0


def iter_turns_backwards(history: Sequence[StoredMessage]) -> Any:
    """Yield (start, end) index ranges of turns, newest first. Messages before the first turn
    start (a log that begins with an assistant message) form a turn of their own."""
    end = len(history)
    for i in range(len(history) - 1, -1, -1):
        if history[i].message.starts_turn or i == 0:
            yield i, end
            end = i


def persona_blocks(system: str) -> list[TextBlock]:
    return [TextBlock(text=system)] if system else []


def from_stored(stored: Sequence[StoredMessage], system: str) -> Context:
    """A context made of stored messages as they are."""
    return Context(
        system=persona_blocks(system),
        messages=[sm.message for sm in stored],
        sources=[[sm.seq] for sm in stored],
    )
