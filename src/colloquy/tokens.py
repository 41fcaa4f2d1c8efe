"""Counting tokens offline, calibrated against what the API really bills.

Why an estimator: a context policy decides every turn what fits under a budget, and asking the
provider to count (a network round trip) for every candidate cut would cost more than the turn.
The estimator is cheap (characters and words), and each real response's ``usage`` tells how far
off it was for that model; an exponential moving average of that ratio corrects later estimates.
When an exact number matters, :meth:`Model.count_tokens` asks the provider (Anthropic's
count_tokens endpoint).
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from .messages import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock

_WORDISH = re.compile(r"\w+|[^\w\s]", re.UNICODE)

#: Tokens the API adds around each message (role markers) and around the whole request.
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 8
#: Anthropic bills an image at roughly (width * height) / 750 tokens; without the pixel size we
#: assume a mid-sized picture.
IMAGE_TOKENS = 1_600


@functools.lru_cache(maxsize=4_096)
def estimate_text(text: str) -> int:
    """Rough BPE token count: most words are one token, long words and symbols cost more.

    Averages about 4 characters per token on English prose, like real tokenizers.
    """
    if not text:
        return 0
    by_chars = len(text) / 4.0
    by_words = len(_WORDISH.findall(text)) * 0.75 if len(text) < 20_000 else by_chars
    return max(1, math.ceil(max(by_chars, by_words)))


def estimate_block(block: object) -> int:
    if isinstance(block, TextBlock):
        return estimate_text(block.text)
    if isinstance(block, ToolUseBlock):
        return 10 + estimate_text(block.name) + estimate_text(json.dumps(block.input))
    if isinstance(block, ToolResultBlock):
        if isinstance(block.content, str):
            return 6 + estimate_text(block.content)
        return 6 + sum(estimate_block(b) for b in block.content)
    if isinstance(block, ImageBlock):
        return IMAGE_TOKENS
    return 0


def estimate_tools(tools: Sequence[Any]) -> int:
    """Tokens taken by tool definitions (anything with ``to_anthropic()``, e.g. ToolSpec)."""
    return sum(estimate_text(json.dumps(t.to_anthropic())) for t in tools)


_MEMO: dict[int, tuple[Message, int]] = {}
_MEMO_MAX = 8_192


def estimate_message(message: Message) -> int:
    """Raw token estimate of one message, memoised by identity.

    Messages are frozen values and the engine keeps the same objects in its log from turn to
    turn, so a window of 40 messages is estimated once, not on every turn. The memo holds the
    message itself, so an id is never reused for another object while its entry lives.
    """
    hit = _MEMO.get(id(message))
    if hit is not None and hit[0] is message:
        return hit[1]
    value = MESSAGE_OVERHEAD + sum(estimate_block(b) for b in message.content)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[id(message)] = (message, value)
    return value


class TokenCounter:
    """An estimator with a per-model calibration factor learned from real usage.

    Thread-safe; one process-wide instance (:data:`counter`) is shared by default so that every
    chat on the same model benefits from what the others learned.
    """

    #: Weight of the newest observation in the moving average.
    ALPHA = 0.2
    #: A factor outside these bounds means the observation was not comparable (e.g. a hidden
    #: system prompt or tools the estimate did not see), so it is clamped.
    MIN_FACTOR, MAX_FACTOR = 0.5, 3.0

    def __init__(self) -> None:
        self._factors: dict[str, float] = {}
        self._lock = threading.Lock()

    def factor(self, model: str | None) -> float:
        return self._factors.get(model or "", 1.0)

    def raw(
        self,
        system: str | Sequence[TextBlock] = "",
        messages: Sequence[Message] = (),
        extra: int = 0,
    ) -> int:
        """Uncalibrated estimate of a request's input tokens."""
        sys_tokens = (
            estimate_text(system)
            if isinstance(system, str)
            else sum(estimate_text(b.text) for b in system)
        )
        return REQUEST_OVERHEAD + sys_tokens + sum(estimate_message(m) for m in messages) + extra

    def count(
        self,
        model: str | None,
        system: str | Sequence[TextBlock] = "",
        messages: Sequence[Message] = (),
        extra: int = 0,
    ) -> int:
        """Calibrated estimate of a request's input tokens for ``model``."""
        return self.scale(model, self.raw(system, messages, extra))

    def scale(self, model: str | None, raw_tokens: int) -> int:
        return math.ceil(raw_tokens * self.factor(model))

    def calibrate(self, model: str, raw_estimate: int, actual: int) -> float:
        """Fold one observation (our raw estimate vs the billed prompt tokens) into the factor."""
        if raw_estimate <= 0 or actual <= 0:
            return self.factor(model)
        ratio = min(self.MAX_FACTOR, max(self.MIN_FACTOR, actual / raw_estimate))
        with self._lock:
            old = self._factors.get(model)
            new = ratio if old is None else (1 - self.ALPHA) * old + self.ALPHA * ratio
            self._factors[model] = new
        return new


#: The process-wide counter used when a chat is not given its own.
counter = TokenCounter()
