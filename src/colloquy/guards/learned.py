"""The topic guard that learns the topic from examples, reads the conversation, and cascades to a
model judge for intent.

Per message (input stage):

1. **Rules**: a message that asks the assistant to drop its instructions or topic ("ignore the
   cooking topic and ...", "you are now ...") goes to the judge, whose prompt treats the message
   as data; without a judge it is blocked. Topic words in such a message prove nothing.
2. **Language**: the embedding model is English-only (:mod:`colloquy.guards.language`); a message
   confidently in another language goes to the judge, or is allowed with a note, or blocked, as
   ``non_english`` says ("judge" without a judge allows with a note).
3. **Score**: the fitted :class:`~colloquy.guards.classifier.TopicClassifier` gives
   P(on topic) for the message alone, and for the message read with the user turn it continues
   (its embedding plus ``context_weight`` times the previous user message's, renormalised). No
   length bypass: "louder please" is scored like any other message.
4. **Decide**. With a judge (the cascade): when the conversation would change the decision
   (alone below the threshold, in context above it), or the score alone is inside the
   classifier's uncertain ``band``, the judge decides; it sees the persona, the topic and the
   recent turns, and its calls are billed as side calls through ``GuardContext.calls``.
   Otherwise the classifier decides alone. Without a judge, the in-context score counts only
   for a message that reads as a continuation ("And the return on the 10th?", "make it 8
   instead"; :func:`~colloquy.guards.conversation.carried_by`, shared with the description
   guard). ``stats`` counts checks and judge calls (and why), so the judge share can be
   reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .base import Guard, GuardContext, OnError, Verdict
from .classifier import TopicClassifier, fit_topic_classifier, load_examples
from .conversation import (CONTEXT_WEIGHT, asks_to_change_rules, carried_by, context_weight_ok,
                           previous_user_text, with_context)
from .embedder import SentenceEmbedder, default_embedder
from .language import detect_language, preload
from .topic import ask_topic_judge

NonEnglish = Literal["judge", "allow", "block"]


class LearnedTopicGuard(Guard):
    """Keeps the conversation on topic with a classifier learned from examples (see the module
    docstring for the steps).

    ``classifier``: a fitted :class:`TopicClassifier` or the path of one saved by
    ``colloquy guard fit``; or ``examples``: a file (TOML/JSON/text, see
    :func:`~colloquy.guards.classifier.load_examples`) fitted when the guard is built (seconds
    to minutes: store the fit for a service). ``judge``: a colloquy Model or model name for the
    cascade; None lets the classifier decide everything. ``embed``: texts -> normalised vectors
    (default: the packaged all-MiniLM-L6-v2). Raises ConfigError for a missing classifier or an
    unknown option.
    """

    name = "topic"

    def __init__(
        self,
        classifier: TopicClassifier | str | Path | None = None,
        *,
        examples: str | Path | None = None,
        topics: str = "",
        judge: Any = None,
        embed: Callable[[list[str]], Any] | None = None,
        context_weight: float = CONTEXT_WEIGHT,
        non_english: NonEnglish = "judge",
        target_false_block: float = 0.05,
        steer: str | None = None,
        on_error: OnError = "open",
        timeout: float | None = 10.0,
    ) -> None:
        if non_english not in ("judge", "allow", "block"):
            raise ConfigError(f"topic guard: non_english must be judge, allow or block, not {non_english!r}")
        self.context_weight = context_weight_ok(context_weight)
        embed = embed or default_embedder()
        if embed is None:
            raise ConfigError("the example-based topic guard needs colloquy[embeddings] "
                              "(pip install -e '.[embeddings]') or an embed function")
        self.embed = embed
        if isinstance(embed, SentenceEmbedder):
            embed.start()  # load in the background from now on, not at the first message
        if classifier is None and examples is None:
            raise ConfigError("the example-based topic guard needs a classifier file "
                              "(colloquy guard fit) or an examples file")
        if classifier is None:
            ex = load_examples(str(examples))
            classifier = fit_topic_classifier(ex.on_topic, ex.off_topic, embed=self._embed,
                                              topics=topics or ex.topics,
                                              target_false_block=target_false_block)
        elif not isinstance(classifier, TopicClassifier):
            classifier = TopicClassifier.load(classifier)
        self.classifier = classifier
        self.topics = topics.strip() or classifier.topics or "the assistant's topic"
        if isinstance(judge, str):
            from ..models import get_model

            judge = get_model(judge)
        self.judge = judge
        self.non_english = non_english
        preload()  # the language detector loads in the background, like the embedding model
        self.steer = steer or (f"Sorry, I can only help with {self.topics}. "
                               "Is there something about that I can do for you?")
        self.on_error = on_error
        self.timeout = timeout
        self._stats_lock = threading.Lock()
        #: Counts since the guard was built: checks, judge calls, and why the judge was asked.
        self.stats: dict[str, int] = {"checks": 0, "judge_calls": 0, "band": 0, "context": 0,
                                      "rules": 0, "non_english": 0}

    def _embed(self, texts: list[str]) -> Any:
        import numpy as np

        return np.asarray(self.embed(list(texts)), dtype="float32")

    def _count(self, *keys: str) -> None:
        with self._stats_lock:
            for key in keys:
                self.stats[key] += 1

    @property
    def judge_share(self) -> float:
        """Judge calls per check so far (0.0 before any check)."""
        return self.stats["judge_calls"] / self.stats["checks"] if self.stats["checks"] else 0.0

    def score(self, text: str, previous: str = "") -> tuple[float, float]:
        """``(alone, in_context)``: P(on topic) for ``text``, and for ``text`` read with the
        ``previous`` user message (equal to ``alone`` when there is none)."""
        import numpy as np

        if not previous or self.context_weight == 0:
            p = float(self.classifier.score_vectors(self._embed([text]))[0])
            return p, p
        vecs = self._embed([text, previous])
        mixed = np.asarray(with_context(vecs[0], vecs[1], self.context_weight), dtype="float32")
        alone, in_context = self.classifier.score_vectors(np.vstack([vecs[0], mixed]))
        return float(alone), float(in_context)

    def _judge(self, text: str, ctx: GuardContext, why: str) -> Verdict | None:
        self._count("judge_calls", why)
        on_topic, reason = ask_topic_judge(self.judge, self.topics, text, ctx, persona=ctx.system)
        if on_topic:
            return None
        return Verdict.block(self.steer, reason=f"off topic (judge, {why}): {reason}")

    def check(self, text: str, ctx: GuardContext) -> Verdict | None:
        self._count("checks")
        if not text.strip():
            return None
        if asks_to_change_rules(text):
            if self.judge is not None:
                return self._judge(text, ctx, "rules")
            return Verdict.block(self.steer, reason="asks to change the rules (no judge to ask)")
        lang, _ = detect_language(text, wait=False)
        if lang != "en":
            if self.non_english == "judge" and self.judge is not None:
                return self._judge(text, ctx, "non_english")
            if self.non_english == "block":
                return Verdict.block(self.steer, reason=f"language {lang!r}: not judged (English only)")
            return Verdict(action="allow", note=f"language {lang!r}: the topic classifier is "
                           "English-only, so this message was not judged")
        alone, in_context = self.score(text, previous_user_text(ctx))
        return self.decide(text, ctx, alone, in_context)

    def decide(self, text: str, ctx: GuardContext, alone: float, in_context: float) -> Verdict | None:
        """The verdict from the two scores of :meth:`score` (see the module docstring)."""
        threshold = self.classifier.threshold
        low, high = self.classifier.band
        flips = alone < threshold <= in_context  # the conversation would change the decision
        if self.judge is not None:
            if flips:
                return self._judge(text, ctx, "context")
            if low <= alone < high:
                return self._judge(text, ctx, "band")
            on_topic = alone >= threshold
        else:
            on_topic = carried_by(text, alone >= threshold, in_context >= threshold)
        if on_topic:
            return None
        return Verdict.block(self.steer, reason=(
            f"off topic (classifier): P(on topic) {alone:.2f} alone, {in_context:.2f} in context "
            f"< {threshold:.2f}"))
