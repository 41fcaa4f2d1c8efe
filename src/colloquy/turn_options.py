"""One turn's own options (``Chat.send(..., temperature=, max_tokens=, thinking=, tools=)``).

They travel with the turn (an argument of :meth:`colloquy.Chat._turn`), never stored on the
Chat, so a Chat shared by concurrent requests never mixes two turns' options up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .context.thinking import check_budget
from .messages import ToolUseBlock
from .models.base import ToolSpec


@dataclass(frozen=True)
class TurnOptions:
    """One turn's options; None keeps the chat's own.

    ``temperature``; ``max_tokens`` (the answer's allowance, tokens); ``thinking``: a thinking
    budget in tokens, 0 for no thinking this turn (colloquy.context.thinking); ``tools``: tools
    *declared* for this turn that colloquy does not run (an API client's own tools, or a
    provider's server tools): when the model calls one, the turn ends with the call stored and
    ``stop_reason`` ``"tool_use"``, and the caller sends the results as the next message (the
    OpenAI and Anthropic APIs' client-tool contract). ``api``: the compatible API the turn
    came through (:data:`OPENAI_API` for ``/v1/chat/completions``, :data:`ANTHROPIC_API` for
    ``/v1/messages``; None for colloquy's own: library, CLI, native routes), part of the
    idempotency fingerprint (colloquy.continuity.fingerprint)."""

    temperature: float | None = None
    max_tokens: int | None = None
    thinking: int | None = None
    tools: tuple[ToolSpec, ...] = ()
    api: str | None = None

    @classmethod
    def of(cls, temperature: float | None = None, max_tokens: int | None = None,
           thinking: int | None = None, tools: Iterable[ToolSpec] = (), *,
           api: str | None = None) -> TurnOptions:
        """Checked options: a thinking budget under 1,024 tokens (and not 0) raises ValueError."""
        return cls(temperature=temperature, max_tokens=max_tokens,
                   thinking=None if thinking is None else (check_budget(thinking) or 0),
                   tools=tuple(tools), api=api)

    def specs(self, own: Mapping[str, Any]) -> list[ToolSpec]:
        """Every tool the model is told about: the chat's own (``own``: name -> Tool), then
        this turn's declared ones (a declared name the chat already has is the chat's)."""
        return [t.spec for t in own.values()] + [t for t in self.tools if t.name not in own]

    def declared_call(self, calls: Sequence[ToolUseBlock], own: Mapping[str, Any]) -> bool:
        """Whether a reply's calls include one of this turn's declared tools: the caller's to
        run, so the turn ends there. (An unknown name still gets an error result from the tool
        loop, so the model can recover.)"""
        names = {t.name for t in self.tools} - set(own)
        return any(c.name in names for c in calls)


NO_OPTIONS = TurnOptions()
#: :attr:`TurnOptions.api` of a turn sent to the OpenAI-compatible ``/v1/chat/completions``.
OPENAI_API = "openai.chat.completions"
#: :attr:`TurnOptions.api` of a turn sent to the Anthropic-compatible ``/v1/messages``.
ANTHROPIC_API = "anthropic.messages"

__all__ = ["ANTHROPIC_API", "NO_OPTIONS", "OPENAI_API", "TurnOptions"]
