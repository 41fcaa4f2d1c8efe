"""The length/abuse guard: overlong messages, listed terms, character floods, shouting."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import ConfigError
from .base import Guard, GuardContext, OnError, Stage, Verdict


class LengthGuard(Guard):
    """Blocks overlong messages and obvious abuse: listed terms (whole words, case-insensitive),
    character floods (``aaaaaaaa…``) and mostly-shouting walls of capitals."""

    name = "length"

    def __init__(
        self,
        max_chars: int = 8000,
        *,
        blocked_terms: Sequence[str] = (),
        max_repeat: int = 50,
        stages: Sequence[Stage] = ("input",),
        on_error: OnError = "closed",
        message: str = "That message is too long. Please keep it under {max_chars} characters.",
        abuse_message: str = "Let's keep this conversation respectful, please.",
    ) -> None:
        if max_chars < 1:
            raise ConfigError(f"length guard: max_chars must be at least 1, not {max_chars}")
        self.max_chars = max_chars
        self.blocked_terms = [t for t in blocked_terms if t.strip()]
        self._terms = (
            re.compile(r"\b(?:" + "|".join(re.escape(t) for t in self.blocked_terms) + r")\b", re.I)
            if self.blocked_terms else None
        )
        self._flood = re.compile(r"(.)\1{%d,}" % (max_repeat - 1), re.S) if max_repeat > 1 else None
        self.stages = tuple(stages)
        self.on_error = on_error
        self.timeout = None  # pure computation: no thread needed
        self.message = message
        self.abuse_message = abuse_message

    def check(self, text: str, ctx: GuardContext) -> Verdict | None:
        if len(text) > self.max_chars:
            return Verdict.block(self.message.format(max_chars=self.max_chars),
                                 reason=f"{len(text)} characters > {self.max_chars}")
        if self._terms is not None and (m := self._terms.search(text)):
            return Verdict.block(self.abuse_message, reason=f"blocked term {m.group(0).lower()!r}")
        if self._flood is not None and self._flood.search(text):
            return Verdict.block(self.abuse_message, reason="character flood")
        letters = [c for c in text if c.isalpha()]
        if len(letters) >= 200 and sum(c.isupper() for c in letters) / len(letters) > 0.9:
            return Verdict.block(self.abuse_message, reason="shouting")
        return None
