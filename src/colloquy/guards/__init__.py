"""Guards: checks that run on a turn's text before the model call (input) and after it (output).

Each guard returns a :class:`Verdict`: ``allow``, ``block`` (with a message for the user) or
``rewrite`` (with the text to use instead). :class:`Chat` runs them in order:

    input guards   on the user's text: a block stores the turn with its verdict and answers with
                   the block message, *without calling the model*; a rewrite changes what is
                   stored and sent (e.g. PII redaction)
    output guards  on the model's final text: a block replaces the reply with the block message,
                   a rewrite replaces the reply's text (what is stored and returned)

Why verdicts are stored and never dropped: a moderation decision is part of the conversation's
history (auditable, visible in ``sessions show``), and a user who was steered back must see the
same log after a restart. Blocked turns are kept out of later contexts, so a blocked message
(an injection, a 100 kB paste) is never replayed to the model.

A guard that raises or times out never crashes the turn: it *fails closed* (the turn is blocked
with a neutral message) or *fails open* (the turn goes on), as configured per guard, and the
failure is recorded in the verdict.

Plug in your own with a plain callable ``fn(text) -> Verdict | bool | None`` or
``fn(text, ctx) -> ...`` wrapped by :func:`as_guard`, or a :class:`Guard` subclass.
"""

from __future__ import annotations

from .base import (
    BLOCKED,
    DEFAULT_FAIL_MESSAGE,
    VERDICTS,
    Action,
    FunctionGuard,
    Guard,
    GuardContext,
    OnError,
    Stage,
    Verdict,
    as_guard,
)
from .config import build_guards, guard_from_config, guard_from_spec, load_guard_config, load_hook
from .embedder import SentenceEmbedder, default_embedder
from .classifier import (
    TopicClassifier,
    TopicExamples,
    fit_topic_classifier,
    generic_messages,
    load_examples,
)
from .language import detect_language, is_english
from .conversation import asks_to_change_rules, continues, is_pleasantry
from .learned import LearnedTopicGuard
from .length import LengthGuard
from .pii import PII_KINDS, PIIRedactor, luhn_ok
from .runner import GuardOutcome, GuardSet, replace_text
from .topic import TOPIC_JUDGE_SYSTEM, TopicGuard, ask_topic_judge, parse_topic_verdict

__all__ = [
    "TopicClassifier",
    "TopicExamples",
    "fit_topic_classifier",
    "generic_messages",
    "load_examples",
    "detect_language",
    "is_english",
    "LearnedTopicGuard",
    "asks_to_change_rules",
    "continues",
    "is_pleasantry",
    "ask_topic_judge",
    "DEFAULT_FAIL_MESSAGE",
    "VERDICTS",
    "Action",
    "OnError",
    "Stage",
    "load_hook",
    "default_embedder",
    "PII_KINDS",
    "replace_text",
    "TOPIC_JUDGE_SYSTEM",
    "build_guards",
    "BLOCKED",
    "FunctionGuard",
    "Guard",
    "GuardContext",
    "GuardOutcome",
    "GuardSet",
    "LengthGuard",
    "PIIRedactor",
    "SentenceEmbedder",
    "TopicGuard",
    "Verdict",
    "as_guard",
    "guard_from_config",
    "guard_from_spec",
    "load_guard_config",
    "luhn_ok",
    "parse_topic_verdict",
]
