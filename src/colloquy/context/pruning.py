"""Tool-output pruning: old tool results become short stubs.

Why: a tool result (a web page, a file, a query result) is often the largest thing in a
conversation and matters for a round or two; replayed forever it crowds out everything else.
Results more than K tool rounds old are replaced by a stub naming the tool, the output's size
and its first characters. The tool_result block itself stays (same ``tool_use_id``, same place),
so every tool_use keeps its answer and the request stays valid; only its content shrinks.

A *tool round* is one assistant message that calls tools; rounds are counted from the newest
message back, and K >= 1 (the newest round's results are what the model is answering, never
stubbed). ``per_tool`` sets K per tool name. ``step`` > 1 prunes in steps
(the boundary moves every ``step`` rounds), so a cache-friendly prefix stays byte-identical
between steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..messages import Message, ToolResultBlock
from ..text import as_data
from .base import Context, ContextInput, ContextPolicy

STUB_PREFIX = "[pruned tool output"


def stub_text(tool: str, body: str, head_chars: int) -> str:
    head = as_data(body[:head_chars], one_line=True)  # tool text: data, on the stub's one line
    more = "..." if len(body) > head_chars else ""
    return f"{STUB_PREFIX}: {tool}, {len(body)} chars; head: {head}{more}]"


@dataclass(frozen=True)
class ToolOutputPruning:
    """Replace tool results older than ``keep_rounds`` tool rounds by a stub.

    Use it as a :class:`~colloquy.context.compose.MessageTransform` (``apply``) or around any
    policy: ``ToolOutputPruning(keep_rounds=2).wrap(TokenBudget(8000))``.
    """

    keep_rounds: int = 3
    per_tool: Mapping[str, int] = field(default_factory=dict)
    head_chars: int = 200
    #: Results shorter than this are never worth a stub.
    min_chars: int = 0
    step: int = 1

    def __post_init__(self) -> None:
        if self.keep_rounds < 1 or any(k < 1 for k in self.per_tool.values()):
            raise ConfigError("keep_rounds (and each per_tool value) must be >= 1: the newest "
                              "round's results are what the model is answering")
        if self.head_chars < 0 or self.step < 1:
            raise ConfigError("head_chars must be >= 0 and step >= 1")

    def keep_for(self, tool: str) -> int:
        return self.per_tool.get(tool, self.keep_rounds)

    def apply(
        self, messages: list[Message], sources: list[list[int]] | None = None,
        inp: ContextInput | None = None,
    ) -> list[Message]:
        """The same messages with old tool results stubbed; lengths and pairs unchanged."""
        # Round number (1 = newest) of each assistant message that calls tools.
        total = sum(1 for m in messages if m.role == "assistant" and m.tool_uses)
        out = list(messages)
        seen = 0
        names: dict[str, str] = {}
        for i, m in enumerate(messages):
            if m.role == "assistant" and m.tool_uses:
                seen += 1
                age = total - seen + 1  # rounds counted from the newest
                names = {u.id: u.name for u in m.tool_uses}
                continue
            if m.role != "user" or not m.tool_results or not names:
                continue
            changed = False
            blocks = []
            for b in m.content:
                if isinstance(b, ToolResultBlock) and b.tool_use_id in names:
                    name = names[b.tool_use_id]
                    if self._old(age, total, self.keep_for(name)) and len(b.text) >= self.min_chars \
                            and not b.text.startswith(STUB_PREFIX):
                        b = ToolResultBlock(tool_use_id=b.tool_use_id, is_error=b.is_error,
                                            content=stub_text(name, b.text, self.head_chars),
                                            cache_control=b.cache_control)
                        changed = True
                blocks.append(b)
            if changed:
                out[i] = Message.rebuilt("user", blocks)
            names = {}
        return out

    def _old(self, age: int, total: int, keep: int) -> bool:
        """Rounds older than ``keep``; with ``step``, the boundary moves only every step rounds."""
        if self.step == 1:
            return age > keep
        # Absolute round index from the start (1 = oldest); the pruned prefix grows in steps.
        index = total - age + 1
        pruned_upto = max(0, ((total - keep) // self.step) * self.step)
        return index <= pruned_upto

    def wrap(self, policy: ContextPolicy) -> PrunedPolicy:
        return PrunedPolicy(policy, self)


@dataclass(frozen=True)
class PrunedPolicy:
    """Any policy, with its context's old tool outputs pruned."""

    policy: ContextPolicy
    pruning: ToolOutputPruning

    def build(self, inp: ContextInput) -> Context:
        ctx = self.policy.build(inp)
        ctx.messages = self.pruning.apply(ctx.messages, ctx.sources, inp)
        return ctx


__all__ = ["PrunedPolicy", "ToolOutputPruning", "stub_text"]
