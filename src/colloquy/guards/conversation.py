"""Reading a message with the conversation: the rules both topic guards share.

A topic guard judges the user's new message, but a message is said *in* a conversation: "And the
return on the 10th?" after a flight booking is on topic although it names no topic, while "Also,
can you check my bank balance?" after a recipe changes the subject although it starts like a
follow-up. Both guards (:mod:`colloquy.guards.topic`, by description, and
:mod:`colloquy.guards.learned`, from examples) score a message alone and read with the user turn it
continues (:func:`previous_user_text`, :func:`with_context`), and without a model judge let the
conversation count only for a message that reads as a continuation (:func:`carried_by`).

Nothing passes on length: "louder please" is judged like any message. What must stay usable
without being on topic, greetings, thanks, goodbyes and one-word acknowledgements, is a short
explicit list (:data:`PLEASANTRY`), matched against the whole message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import ConfigError
from .base import GuardContext

#: How much of the previous user turn's embedding is added to the message's when it is read in
#: context (the learned guard's default; the description guard's too).
CONTEXT_WEIGHT = 0.5

#: Words that mark a message as continuing the previous turn ("And the return on the 10th?",
#: "Make it 8 instead", "what about savings?"): a leading connective, or a word that refers back.
#: About 17% of CLINC150's self-contained queries contain one, so the cue alone decides nothing.
CONTINUATION = re.compile(
    r"^\W*(?:and|but|also|so|ok|okay|what about|how about|then|or|yes|no|make it|the)\b"
    r"|\b(?:it|that|this|those|these|them|there|one|instead|same|else|too|either|another)\b",
    re.I,
)

#: Requests to drop the assistant's instructions, persona or topic (case-insensitive). A phrase
#: list, not a classifier: it only decides who judges (the model judge, or a block without one).
RULE_CHANGE = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass|drop|skip)\b[^.?!]{0,40}?"
    r"\b(?:instructions?|rules?|topics?|guidelines?|prompts?|restrictions?|persona|system|"
    r"everything (?:you were|i) (?:told|said))\b"
    r"|\byou are now\b|\bfrom now on,? you\b|\bpretend (?:to be|you(?: are|'re))\b"
    r"|\b(?:system|developer|hidden) prompt\b|\bjailbreak|\bno (?:more )?restrictions\b"
    r"|\bdeveloper mode\b|\bact as (?:if|an? |my )",
    re.I,
)

_GREETING = (r"hi|hello|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening|day)|"
             r"(?:good ?)?bye|goodnight|good night|see (?:you|ya)(?: later| soon| tomorrow)?|"
             r"take care|have a (?:good|nice|great) (?:day|one|evening|night|weekend)")
_THANKS = (r"thanks?|thank you|thankyou|thx|ty|cheers|many thanks|much appreciated|"
           r"(?:i |that's |that is )?(?:really )?appreciated?(?: it)?|you're welcome|no worries")
_ACK = (r"ok|okay|k|sure|yes|yeah|yep|no|nope|alright|all right|got it|great|perfect|cool|nice|"
        r"awesome|fine|sounds good|that's (?:great|perfect|helpful|all)|that helps|"
        r"that was helpful")
_FILLER = r"(?:\s+(?:so much|very much|a lot|again|there|everyone|all|for (?:that|your help|the help)))*"
_ONE = rf"(?:{_GREETING}|{_THANKS}|{_ACK}){_FILLER}"

#: A whole message that is only greetings, thanks, goodbyes or acknowledgements ("hi!", "thanks a
#: lot", "ok, bye"): always allowed, because a steer back to the topic would answer a courtesy
#: with a refusal. An explicit list, not a length rule: "louder please" is not on it. Its cost,
#: measured on CLINC150 (bench/topic.py, "pleasantries passed"): the small-talk and meta
#: domains' queries that are only a greeting, thanks or yes/no pass the description guard.
PLEASANTRY = re.compile(rf"^[\W_]*{_ONE}(?:[\W_]+{_ONE})*[\W_]*$", re.I)


def continues(text: str) -> bool:
    """Whether ``text`` reads as a continuation of the previous turn (see :data:`CONTINUATION`)."""
    return CONTINUATION.search(text) is not None


def asks_to_change_rules(text: str) -> bool:
    """Whether ``text`` asks the assistant to set aside its instructions or topic."""
    return RULE_CHANGE.search(text) is not None


def is_pleasantry(text: str) -> bool:
    """Whether ``text`` is only greetings, thanks or acknowledgements (see :data:`PLEASANTRY`)."""
    return PLEASANTRY.match(text.strip()) is not None


def previous_user_text(ctx: GuardContext) -> str:
    """The text of the last user message in ``ctx.recent`` ("" when none): the turn a new message
    continues. Blocked turns are not in ``recent``, so an off-topic turn never carries the next."""
    for sm in reversed(ctx.recent):
        if sm.role == "user" and sm.message.text.strip():
            return sm.message.text
    return ""


def with_context(vector: Sequence[float], previous: Sequence[float],
                 weight: float = CONTEXT_WEIGHT) -> list[float]:
    """The embedding of a message read with the previous user turn: ``vector + weight *
    previous``, renormalised to unit length (both inputs normalised embeddings)."""
    mixed = [float(a) + weight * float(b) for a, b in zip(vector, previous)]
    norm = sum(x * x for x in mixed) ** 0.5 or 1.0
    return [x / norm for x in mixed]


def context_weight_ok(weight: float) -> float:
    """``weight`` when it is in [0, 1] (0 reads every message alone); else ConfigError."""
    if not 0 <= weight <= 1:
        raise ConfigError(f"topic guard: context_weight must be in [0, 1], not {weight}")
    return weight


def carried_by(text: str, on_topic_alone: bool, on_topic_in_context: bool) -> bool:
    """Whether a message is on topic when no model judges it: alone, or read with the previous
    user turn when it reads as a continuation (:func:`continues`). An embedding or keywords
    cannot tell a follow-up from a change of subject: on CLINC150's val split, letting every
    message after an on-topic turn borrow its topic cut the off-topic queries blocked by 12-26
    points; with the continuation rule, by 3-8 (bench/topic.py, "+conversation")."""
    return on_topic_alone or (on_topic_in_context and continues(text))
