"""Counting tokens offline, calibrated against what the API really bills.

Why an estimator: a context policy decides every turn what fits under a budget, and asking the
provider to count (a network round trip) for every candidate cut would cost more than the turn.
The estimator is cheap (characters and words), and each real response's ``usage`` tells how far
off it was for that model; an exponential moving average of that ratio corrects later estimates.
When an exact number matters, :meth:`Model.count_tokens` asks the provider (Anthropic's
count_tokens endpoint).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from .messages import (
    DocumentBlock,
    ImageBlock,
    Message,
    RedactedThinkingBlock,
    SearchResultBlock,
    ServerToolResultBlock,
    ServerToolUseBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)
from .caches import text_memo
from .usage import Usage

#: Word-like pieces as BPE tokenizers cut them: letter runs, numbers in groups of up to three
#: digits (cl100k_base and o200k_base split numbers so), each punctuation mark or symbol.
_WORDISH = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]|_+", re.UNICODE)
#: The same for ASCII text (most messages), where the ASCII flag makes the scan faster.
_WORDISH_ASCII = re.compile(_WORDISH.pattern, re.ASCII)

#: Tokens the API adds around each message (role markers) and around the whole request.
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 8
#: Anthropic bills an image at roughly (width * height) / 750 tokens; without the pixel size we
#: assume a mid-sized picture.
IMAGE_TOKENS = 1_600
#: Anthropic: "each page typically uses 1,500-3,000 tokens" of text, plus the page as an image
#: (the PDF support page); the middle of that range, per page counted in the file.
PDF_PAGE_TOKENS = 2_250
#: A PDF colloquy cannot read (a URL or an uploaded file): a few pages' worth. Calibration
#: against the billed usage corrects the rest.
UNREAD_PDF_TOKENS = 4 * PDF_PAGE_TOKENS
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")

#: Tokens per character of scripts that BPE tokenizers split finely, measured against
#: OpenAI's cl100k_base on prose samples (tests/test_tokens_scripts.py): Cyrillic ~0.55
#: tokens a letter, Arabic ~0.85, Devanagari ~1.25, Hangul ~1.2, Chinese and Japanese ~1.2.
#: Counting these by words (as for Latin text) undercounted them 2x-6x.
_SCRIPT_CLASSES: tuple[tuple[str, re.Pattern[str], float], ...] = (
    ("cyrillic", re.compile(r"[\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f]"), 0.55),
    ("greek", re.compile(r"[\u0370-\u03ff\u1f00-\u1fff]"), 0.6),
    ("arabic", re.compile(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]"), 0.85),
    ("indic", re.compile(r"[\u0900-\u0dff\u0e00-\u0fff\u1000-\u109f]"), 1.25),
    ("hangul", re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]"), 1.2),
    ("cjk", re.compile(r"[\u2e80-\u2fdf\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
                       r"\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]"), 1.2),
    # Emoji and other symbols outside the BMP: several byte-level tokens each.
    ("symbols", re.compile(r"[\U0001f000-\U0001faff]"), 2.0),
)
_DIGIT_GROUPS = re.compile(r"\d{1,3}", re.ASCII)
_SAMPLED_OVER, _WINDOW = 20_000, 4_000
_ANY_SCRIPT = re.compile("|".join(p.pattern for _, p, _ in _SCRIPT_CLASSES))


def _latin_estimate(text: str) -> float:
    """Latin-script text and code: about 4.8 characters a token on English prose, 0.75 of a
    token per word-like piece (:data:`_WORDISH`), whichever is more: punctuation-dense code
    and numbers are counted by pieces, long words by characters. A group of digits costs a
    whole token and the space before it another half (cl100k_base gives it its own)."""
    return max(len(text) / 4.8, _pieces(text))


def _pieces(text: str) -> float:
    wordish = _WORDISH_ASCII if text.isascii() else _WORDISH
    return len(wordish.findall(text)) * 0.75 + len(_DIGIT_GROUPS.findall(text)) * 0.5


#: What :func:`estimate_text` counts in a text: (characters, word pieces, tokens of the finely
#: split scripts). Parts add up: texts joined by newlines have the sum of their parts (plus one
#: character per newline), so a text built from pieces is estimated from theirs.
Parts = tuple[int, float, float]


def text_parts(text: str) -> Parts:
    """The :data:`Parts` of ``text`` (not sampled: for pieces of a larger text)."""
    if text.isascii():
        return len(text), _pieces(text), 0.0
    total, rest = _script_split(text)
    return len(rest), (_pieces(rest) if rest else 0.0), total


def parts_estimate(parts: Parts) -> int:
    """The estimate of a text from its :data:`Parts` (as :func:`estimate_text` counts it)."""
    chars, pieces, script = parts
    if not chars and not script:
        return 0
    return max(1, math.ceil(script + max(chars / 4.8, pieces)))


def add_parts(a: Parts, b: Parts, newlines: int = 0) -> Parts:
    """The parts of two texts joined by ``newlines`` newline characters."""
    return a[0] + b[0] + newlines, a[1] + b[1], a[2] + b[2]


#: Texts whose builder already knew their estimate (:func:`note_estimate`), newest last.
_NOTED: dict[str, int] = {}
_NOTED_MAX = 64  # recall blocks of up to ~30 KB each: a few MB at most


def note_estimate(text: str, tokens: int) -> None:
    """Record the estimate of a text its builder already knows, so :func:`estimate_text`
    returns it without scanning the text again.

    Why: recall joins a few hundred excerpt lines whose estimates were computed once, when
    they were indexed; scanning the joined 8,000-token block again cost ~4 ms on every turn.
    ``tokens`` must be an estimate of the same kind (e.g. :func:`parts_estimate` of the sum of
    the lines' :func:`text_parts`). Only the newest :data:`_NOTED_MAX` are kept.
    """
    with _NOTED_LOCK:
        _NOTED.pop(text, None)
        _NOTED[text] = tokens
        while len(_NOTED) > _NOTED_MAX:
            del _NOTED[next(iter(_NOTED))]


_NOTED_LOCK = threading.Lock()


def estimate_text(text: str) -> int:
    """Rough BPE token count, script-aware (see :func:`_estimate_text`); a text recorded by
    :func:`note_estimate` gets its recorded count."""
    noted = _NOTED.get(text)
    return noted if noted is not None else _estimate_text(text)


@functools.lru_cache(maxsize=4_096)
def _estimate_text(text: str) -> int:
    """Rough BPE token count, script-aware.

    Latin text and code are counted by characters and words (:func:`_latin_estimate`); the
    characters of scripts that tokenizers split finely (Cyrillic, Arabic, Indic, Hangul,
    Chinese, Japanese, emoji) are counted one by one at their measured rate. Within
    0.75x-1.5x of cl100k_base for English, code, Russian, Arabic, Hindi, Chinese, Japanese and
    Korean samples (tests/test_tokens_scripts.py); the per-model calibration corrects the rest.
    """
    if not text:
        return 0
    n = len(text)
    if n > _SAMPLED_OVER:
        # A long text is measured on 5 evenly spaced windows and scaled: the same answer within
        # a few percent at a bounded cost (a pasted 1 MB log must not stall the turn).
        step = (n - _WINDOW) // 4
        sample = "".join(text[k * step: k * step + _WINDOW] for k in range(5))
        return max(1, math.ceil(_estimate(sample) * n / len(sample)))
    return max(1, math.ceil(_estimate(text)))


def _estimate(text: str) -> float:
    return _latin_estimate(text) if text.isascii() else script_estimate(text)


def script_estimate(text: str) -> float:
    """The uncapped estimate of a non-ASCII text: each script class at its rate, the rest as
    Latin text (what remains once those characters are taken out)."""
    total, rest = _script_split(text)
    return total + (_latin_estimate(rest) if rest else 0.0)


def _script_split(text: str) -> tuple[float, str]:
    """(tokens of the finely split scripts' characters, the rest of the text)."""
    total = 0.0
    rest = text
    if _ANY_SCRIPT.search(text) is not None:
        for _, pattern, rate in _SCRIPT_CLASSES:
            rest, n = pattern.subn(" ", rest)
            total += n * rate
        rest = " ".join(rest.split())
    return total, rest


def pdf_pages(data: str) -> int:
    """Pages of a base64 PDF, counted by its page objects (at least 1)."""
    try:
        raw = base64.b64decode(data, validate=False)
    except ValueError:
        return 1
    return max(1, len(_PAGE.findall(raw)))


def _estimate_document(block: DocumentBlock) -> int:
    head = estimate_text(block.title or "") + estimate_text(block.context or "")
    src = block.source
    if src.get("type") == "base64" and src.get("media_type") == "application/pdf":
        return head + PDF_PAGE_TOKENS * pdf_pages(str(src.get("data", "")))
    if src.get("type") in ("url", "file"):
        return head + UNREAD_PDF_TOKENS
    content = src.get("content")
    images = sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image") \
        if isinstance(content, list) else 0
    return head + estimate_text(block.text) + images * IMAGE_TOKENS


def estimate_block(block: object) -> int:
    """Input tokens of one block. Citations are not counted: the API bills neither the cited
    text nor the citation objects as input (Anthropic's citations page)."""
    if isinstance(block, TextBlock):
        return estimate_text(block.text)
    if isinstance(block, (ToolUseBlock, ServerToolUseBlock)):
        return 10 + estimate_text(block.name) + estimate_text(json.dumps(block.input))
    if isinstance(block, ToolResultBlock):
        if isinstance(block.content, str):
            return 6 + estimate_text(block.content)
        return 6 + sum(estimate_block(b) for b in block.content)
    if isinstance(block, ImageBlock):
        return IMAGE_TOKENS
    if isinstance(block, ThinkingBlock):
        return estimate_text(block.thinking)
    if isinstance(block, RedactedThinkingBlock):
        return math.ceil(len(block.data) * 3 / 4 / 4)  # opaque bytes, about 4 per token
    if isinstance(block, DocumentBlock):
        return _estimate_document(block)
    if isinstance(block, SearchResultBlock):
        return 6 + estimate_text(block.title) + estimate_text(block.source) + estimate_text(block.text)
    if isinstance(block, ServerToolResultBlock):
        return 6 + estimate_text(json.dumps(block.content))
    if isinstance(block, UnknownBlock):
        return estimate_text(json.dumps(block.raw))
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


def estimate_messages(messages: Iterable[Message]) -> int:
    """``sum(map(estimate_message, messages))``, the memo's hits read inline: a request's whole
    window is summed several times a turn (the policy, the calibration, a model's estimate),
    and the call per message was most of the cost of a hit."""
    memo = _MEMO
    total = 0
    for m in messages:
        hit = memo.get(id(m))
        total += hit[1] if hit is not None and hit[0] is m else estimate_message(m)
    return total


def _forget_texts() -> None:
    with _NOTED_LOCK:
        _NOTED.clear()
    _MEMO.clear()
    _estimate_text.cache_clear()


#: The memos above hold texts and messages of any conversation: a deletion empties them.
_FORGETS = text_memo(_forget_texts)


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
        return REQUEST_OVERHEAD + sys_tokens + estimate_messages(messages) + extra

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


def estimated_usage(
    system: str | Sequence[TextBlock], messages: Sequence[Message], tools: Sequence[Any],
    reply: Sequence[object],
) -> Usage:
    """The usage of a call whose provider reported none (an OpenAI-compatible server that
    streams no usage chunk): the raw estimate of the request and of the reply's blocks, marked
    ``estimated`` so nobody mistakes it for a bill, and never a false zero."""
    return Usage(
        input_tokens=counter.raw(system, messages, extra=estimate_tools(tools)),
        output_tokens=sum(estimate_block(b) for b in reply),
        estimated=True,
    )


#: The process-wide counter used when a chat is not given its own.
counter = TokenCounter()
