"""Guard, verdict and context: the types every guard shares (see :mod:`colloquy.guards`)."""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..messages import StoredMessage

Stage = Literal["input", "output"]
Action = Literal["allow", "block", "rewrite"]
OnError = Literal["closed", "open"]

#: Meta key on stored messages of a blocked turn (both the user message and the block reply).
BLOCKED = "blocked"
#: Meta key holding the list of non-allow verdicts (and failures) of a stored message.
VERDICTS = "guards"

DEFAULT_FAIL_MESSAGE = "Sorry, I can't process that message right now. Please try again later."


class Verdict(BaseModel):
    """A guard's decision about one text."""

    model_config = ConfigDict(frozen=True)
    action: Action = "allow"
    #: For ``block``: what the user is told.
    message: str | None = None
    #: For ``rewrite``: the text to use instead.
    text: str | None = None
    #: Why (for the log, not the user).
    reason: str | None = None
    #: The guard's name; filled in by the runner.
    guard: str = ""
    stage: Stage | None = None
    #: Set when the guard raised or timed out and its fail mode decided the verdict.
    error: str | None = None
    #: Worth recording even on an allow (e.g. "not judged: not English"); an allow with a note
    #: is stored with the message like a block or rewrite, a plain allow is not.
    note: str | None = None

    @classmethod
    def allow(cls, reason: str | None = None) -> Verdict:
        return cls(action="allow", reason=reason)

    @classmethod
    def block(cls, message: str, reason: str | None = None) -> Verdict:
        return cls(action="block", message=message, reason=reason)

    @classmethod
    def rewrite(cls, text: str, reason: str | None = None) -> Verdict:
        return cls(action="rewrite", text=text, reason=reason)

    def record(self) -> dict[str, Any]:
        """What is stored in a message's meta (never the rewritten text: it is the message)."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"text"})


@dataclass
class GuardContext:
    """What a guard may look at besides the text."""

    stage: Stage
    system: str = ""
    conversation_id: str | None = None
    user_id: str | None = None
    #: The newest stored messages (blocked turns excluded), oldest first; a few, not the log.
    recent: Sequence[StoredMessage] = ()
    #: The chat's model, for guards that may reuse it.
    model: Any = None
    #: Model calls a guard made, as (model, usage): the chat bills them to the session.
    calls: list[tuple[Any, Any]] = field(default_factory=list)


class Guard(ABC):
    """A check on one stage (or both). Subclasses implement :meth:`check`."""

    name: str = "guard"
    stages: tuple[Stage, ...] = ("input",)
    #: What a failure (exception, timeout) means: ``closed`` blocks the turn, ``open`` allows it.
    on_error: OnError = "closed"
    #: Seconds before the check counts as failed; None waits forever.
    timeout: float | None = 10.0
    #: What the user is told when this guard fails closed.
    fail_message: str = DEFAULT_FAIL_MESSAGE

    @abstractmethod
    def check(self, text: str, ctx: GuardContext) -> Verdict | None:
        """Judge ``text``; None means allow."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, stages={self.stages})"


class FunctionGuard(Guard):
    """A plain callable as a guard: ``fn(text)`` or ``fn(text, ctx)``, sync or async, returning a
    :class:`Verdict`, ``None``/``True`` (allow) or ``False`` (block with ``block_message``)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        stages: Sequence[Stage] = ("input",),
        on_error: OnError = "closed",
        timeout: float | None = 10.0,
        block_message: str = "Sorry, I can't help with that.",
    ) -> None:
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", type(fn).__name__))
        self.stages = tuple(stages)
        self.on_error = on_error
        self.timeout = timeout
        self.block_message = block_message
        try:
            params = [
                p for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
            self._pass_ctx = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):  # builtins without a signature
            self._pass_ctx = False

    def check(self, text: str, ctx: GuardContext) -> Verdict | None:
        out = self.fn(text, ctx) if self._pass_ctx else self.fn(text)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        if out is None or out is True:
            return None
        if out is False:
            return Verdict.block(self.block_message, reason=f"{self.name} returned False")
        if isinstance(out, Verdict):
            return out
        raise TypeError(f"guard {self.name!r} returned {type(out).__name__}, not a Verdict/bool/None")


async def _await(aw: Any) -> Any:
    return await aw


def as_guard(obj: Guard | Callable[..., Any], **kwargs: Any) -> Guard:
    """A :class:`Guard` from a guard or a callable (``kwargs`` configure a wrapped callable)."""
    if isinstance(obj, Guard):
        return obj
    if callable(obj):
        return FunctionGuard(obj, **kwargs)
    raise ConfigError(f"not a guard: {obj!r} (give a Guard or a callable)")
