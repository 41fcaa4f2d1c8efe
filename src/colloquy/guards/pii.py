"""PII redaction: emails, phone numbers and Luhn-checked card numbers become placeholders."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from .base import Guard, GuardContext, OnError, Stage, Verdict


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies."""
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w)"
)
PII_KINDS = ("email", "phone", "card")


class PIIRedactor(Guard):
    """Replaces emails, phone numbers and payment card numbers (Luhn-checked) with placeholders
    such as ``[email]``, in what is stored *and* what is sent: on the user's message (input) and
    on the model's reply (output). ``kinds`` picks which; ``extra`` adds named regexes."""

    name = "pii"

    def __init__(
        self,
        kinds: Sequence[str] = PII_KINDS,
        *,
        extra: dict[str, str] | None = None,
        placeholder: str = "[{kind}]",
        stages: Sequence[Stage] = ("input", "output"),
        on_error: OnError = "closed",
    ) -> None:
        unknown = set(kinds) - set(PII_KINDS)
        if unknown:
            raise ConfigError(f"pii guard: unknown kinds {sorted(unknown)}; use {list(PII_KINDS)}")
        self.kinds = tuple(kinds)
        self.extra = {k: re.compile(v) for k, v in (extra or {}).items()}
        self.placeholder = placeholder
        self.stages = tuple(stages)
        self.on_error = on_error
        self.timeout = None

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The redacted text and how many of each kind were found."""
        counts: dict[str, int] = {}

        def sub(kind: str, pattern: re.Pattern[str], s: str,
                accept: Callable[[str], bool] = lambda _: True) -> str:
            def repl(m: re.Match[str]) -> str:
                if not accept(m.group(0)):
                    return m.group(0)
                counts[kind] = counts.get(kind, 0) + 1
                return self.placeholder.format(kind=kind)
            return pattern.sub(repl, s)

        if "email" in self.kinds:
            text = sub("email", _EMAIL, text)
        if "card" in self.kinds:
            text = sub("card", _CARD, text, lambda s: luhn_ok(re.sub(r"\D", "", s)))
        if "phone" in self.kinds:
            def phone_like(s: str) -> bool:
                digits = re.sub(r"\D", "", s)
                # 8-15 digits (E.164), and some sign of a phone: a +, brackets or separators,
                # so plain numbers in prose (a year, a quantity) are left alone.
                return 8 <= len(digits) <= 15 and (len(digits) != len(s) or len(digits) >= 10)
            text = sub("phone", _PHONE, text, phone_like)
        for kind, pattern in self.extra.items():
            text = sub(kind, pattern, text)
        return text, counts

    def check(self, text: str, ctx: GuardContext) -> Verdict | None:
        redacted, counts = self.redact(text)
        if not counts:
            return None
        return Verdict.rewrite(redacted, reason="redacted " + ", ".join(
            f"{n} {k}" for k, n in sorted(counts.items())))
