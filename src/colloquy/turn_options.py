"""One turn's own options (``Chat.send(..., temperature=, max_tokens=, thinking=, tools=,
tool_choice=)``).

They travel with the turn (an argument of :meth:`colloquy.Chat._turn`), never stored on the
Chat, so a Chat shared by concurrent requests never mixes two turns' options up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .context.thinking import check_budget
from .messages import ToolUseBlock
from .models.base import ToolChoice, ToolSpec


@dataclass(frozen=True)
class TurnOptions:
    """One turn's options; None keeps the chat's own.

    ``temperature``; ``max_tokens`` (the answer's allowance, tokens); ``thinking``: a thinking
    budget in tokens, 0 for no thinking this turn (colloquy.context.thinking); ``tools``: tools
    *declared* for this turn that colloquy does not run (an API client's own tools, or a
    provider's server tools): when the model calls one, the turn ends with the call stored and
    ``stop_reason`` ``"tool_use"``, and the caller sends the results as the next message (the
    OpenAI and Anthropic APIs' client-tool contract). ``tool_choice``: how the model may use
    the tools (:class:`~colloquy.models.ToolChoice`; None: the provider's default), sent with
    the turn's first call; a choice that forces a call (``any``, ``tool``) is not sent again
    after colloquy ran the chat's own tools, or the loop would never end. ``api``: the compatible API the turn
    came through (:data:`OPENAI_API` for ``/v1/chat/completions``, :data:`ANTHROPIC_API` for
    ``/v1/messages``; None for colloquy's own: library, CLI, native routes), part of the
    idempotency fingerprint (colloquy.continuity.fingerprint)."""

    temperature: float | None = None
    max_tokens: int | None = None
    thinking: int | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    api: str | None = None

    @classmethod
    def of(cls, temperature: float | None = None, max_tokens: int | None = None,
           thinking: int | None = None, tools: Iterable[ToolSpec] = (), *,
           tool_choice: ToolChoice | str | Mapping[str, Any] | None = None,
           api: str | None = None) -> TurnOptions:
        """Checked options: a thinking budget under 1,024 tokens (and not 0), or a tool_choice
        of another shape (:meth:`ToolChoice.of`), raises ValueError."""
        return cls(temperature=temperature, max_tokens=max_tokens,
                   thinking=None if thinking is None else (check_budget(thinking) or 0),
                   tools=tuple(tools),
                   tool_choice=None if tool_choice is None else ToolChoice.of(tool_choice),
                   api=api)

    def check_choice(self, own: Mapping[str, Any]) -> None:
        """ValueError when the tool_choice cannot be honoured: there are no tools (both APIs
        refuse a tool_choice without them), or it names a tool the model is not offered."""
        choice = self.tool_choice
        if choice is None:
            return
        names = [t.name for t in self.specs(own)]
        if not names:
            raise ValueError("tool_choice needs tools: the turn offers the model none")
        if choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names {choice.name!r}, which is not among the "
                             f"tools offered: {', '.join(names)}")

    def choice_after(self, ran_tools: bool) -> ToolChoice | None:
        """The tool_choice of a call: the turn's, but not a forced call once colloquy ran tools
        this turn (only ``disable_parallel_tool_use`` is kept then)."""
        choice = self.tool_choice
        if choice is None or not ran_tools or choice.type in ("auto", "none"):
            return choice
        if choice.disable_parallel_tool_use is None:
            return None
        return ToolChoice(type="auto", disable_parallel_tool_use=choice.disable_parallel_tool_use)

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
