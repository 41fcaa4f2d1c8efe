"""The default policy: recent turns verbatim plus recalled older turns, under a budget fitted to
the model, cache-friendly, with no extra model call.

Why this is the default: a rolling window forgets everything that scrolls out of it (on LoCoMo, a
20-turn window keeps the evidence of about 17% of the questions asked at the end of a long
conversation), and most users never change the default. This policy keeps older turns reachable
instead, for the price of a search over the stored log:

* **Recall** of older turns (context/recall.py): BM25 over the log, fused with the dates, speaker,
  neighbour and session signals, and, when the embeddings extra is installed
  (``pip install -e '.[embeddings]'``), with sentence-embedding similarity too: on LoCoMo
  that keeps the evidence of more questions, most of all of those worded unlike their evidence
  (bench/memory.py, README). Never inside a turn's wait: loading torch and the model took 38 s
  on a busy 2-core machine (load 10) and a resumed long log would embed thousands of units, so
  the model loads in a background thread from the first recall on, units are embedded by a
  background worker, and turns rank by BM25 until the embeddings are there
  (context/background.py). ``retriever="bm25"`` never loads the model.
* **The whole log while it fits** the budget, verbatim (nothing to recall yet).
* **Then a cache-friendly recent window**: the newest turns verbatim in at most
  :data:`DEFAULT_RECENT_SHARE` of the budget, trimmed in steps on a fixed grid (context/cache.py's
  :class:`SteppedWindow`: the cut point moves once per that many tokens said), and recalled
  excerpts in the rest. Claude models get prompt-cache breakpoints; the excerpts, which
  change every turn, go at the start of the newest user message, after the cached prefix.
* **A budget fitted to the model** (:func:`default_budget`): half the model's context window
  (models/limits.py), at most :data:`DEFAULT_BUDGET_CAP` tokens, and never more than the window
  minus the reply's ``max_tokens``. The cap is for cost: once a conversation is longer than the
  budget, every turn sends about that much (8,000 tokens is $0.024 of uncached input at Claude
  Sonnet 4.6's $3 per million; the cached share is billed at a tenth).

Nothing is summarised and no fact is extracted (those need model calls: ``--policy memory``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..embeddings import embeddings_available
from ..errors import ConfigError
from ..models.limits import context_window
from .background import background_hybrid
from .base import Context, ContextInput
from .cache import CacheBreakpoints, SteppedWindow, is_anthropic
from .compose import ComposedPolicy
from .policies import fixed_tokens
from .recall import RecallPart
from .retrieval import Retriever

#: What ``DefaultPolicy(retriever=...)`` accepts (see the class).
RETRIEVER_CHOICES = ("auto", "bm25", "hybrid")
#: The most input tokens the default policy sends per request (see the module docstring).
DEFAULT_BUDGET_CAP = 8000
#: Share of the model's context window the default policy may fill.
DEFAULT_WINDOW_SHARE = 0.5
#: Share of the budget for the verbatim recent turns (the most they take: the stepped window
#: holds from the newest turn up to this share); recalled excerpts get the rest. Measured on
#: LoCoMo (bench/memory.py): a larger recent share caches more of each request but recalls less.
DEFAULT_RECENT_SHARE = 0.15
#: BM25 candidates taken before fusion (context/fusion.py). Measured on LoCoMo
#: (bench/memory.py, rows ``default-depth*``): 150 keeps as much evidence as 300 (0.883 vs 0.882
#: at 4k, 0.907 vs 0.901 at 8k; 100 drops to 0.892 at 8k) with half the candidates to score
#: on every turn.
DEFAULT_RECALL_DEPTH = 150
#: Hits the excerpts are packed from, best first, and the share of a hit's score a neighbouring
#: unit needs to come with it. Measured on LoCoMo (rows ``default-cand*``, ``default-nbmin*``):
#: 256 and 0.3 keep 0.891 at 4k and 0.926 at 8k, where 128 and 0.5 kept 0.883 and 0.907 (at 8k,
#: 128 hits did not fill the budget: the requests are that much larger).
DEFAULT_RECALL_CANDIDATES = 256
DEFAULT_NEIGHBOUR_MIN = 0.3


def default_budget(model: str | None, max_tokens: int = 1024, cap: int = DEFAULT_BUDGET_CAP,
                   share: float = DEFAULT_WINDOW_SHARE) -> int:
    """Input tokens for one request of ``model``: ``share`` of its context window, at most
    ``cap``, leaving room for a reply of ``max_tokens``; at least 256."""
    window = context_window(model)
    return max(256, min(cap, int(window * share), window - max_tokens))


@dataclass
class WholeThenStepped:
    """A recent window: the whole log while it fits ``whole`` tokens (calibrated, persona and
    tools counted), then ``stepped``'s window. Both choices follow from the log alone, so every
    process makes the same one."""

    stepped: SteppedWindow
    whole: int

    def window_start(self, inp: ContextInput, budget: int) -> int:
        if not inp.history:
            return 0
        total = self.stepped._positions_for(inp).cum[-1] + fixed_tokens(inp)
        if total * inp.counter.factor(inp.model) <= self.whole:
            return 0
        return self.stepped.window_start(inp, budget)


@dataclass
class DefaultPolicy:
    """What ``Chat(...)`` and ``colloquy chat`` use when given no policy (module docstring).

    ``DefaultPolicy()`` fits its budget to each request's model; ``DefaultPolicy(4000)`` fixes
    it. ``retriever``: ``"auto"`` (default: ``"hybrid"`` when the embeddings extra is installed,
    else ``"bm25"``), ``"bm25"`` (keywords, dates, speakers; never loads a model) or
    ``"hybrid"`` (sentence embeddings too, loaded and computed in the background: a turn never
    waits for them; ConfigError here without the extra), or a retriever factory (benchmarks).
    """

    max_input_tokens: int | None = None
    recent_share: float = DEFAULT_RECENT_SHARE
    cap: int = DEFAULT_BUDGET_CAP
    retriever: str | Callable[[], Retriever] | None = "auto"
    part: RecallPart = field(init=False, repr=False)
    _policies: dict[tuple[int, bool], ComposedPolicy | CacheBreakpoints] = field(
        default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigError(f"max_input_tokens must be positive, not {self.max_input_tokens}")
        if not 0.0 < self.recent_share < 1.0:
            raise ConfigError(f"recent_share must be in (0, 1), not {self.recent_share}")
        if self.retriever is None:
            self.retriever = "auto"
        if not callable(self.retriever) and self.retriever not in RETRIEVER_CHOICES:
            raise ConfigError(f"the default policy's retriever is one of "
                              f"{', '.join(RETRIEVER_CHOICES)}, not {self.retriever!r}")
        if self.retriever == "hybrid" and not embeddings_available():
            raise ConfigError("retriever 'hybrid' needs the embeddings extra: "
                              "pip install -e '.[embeddings]'")
        dense = self.retriever == "hybrid" or (self.retriever == "auto" and embeddings_available())
        chosen = self.retriever if callable(self.retriever) else (
            background_hybrid if dense else "bm25")
        # One recall part (one index per conversation) whatever the budget of the request.
        self.part = RecallPart(chosen, depth=DEFAULT_RECALL_DEPTH,
                               candidates=DEFAULT_RECALL_CANDIDATES,
                               neighbour_min=DEFAULT_NEIGHBOUR_MIN)

    @property
    def dense(self) -> bool:
        """Whether recall uses sentence embeddings (once they are ready)."""
        return self.part.retriever is background_hybrid

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) until the embedding model
        is loaded and every unit indexed so far is embedded, so recall is fully hybrid; True
        then. False at once for a BM25 policy. For tests and benchmarks: a chat never needs
        to call it."""
        if not self.dense:
            return False
        with self.part._lock:
            indexes = list(self.part._indexes.values())
        if not indexes:
            from .. import embeddings

            return embeddings.wait_loaded(None, timeout)
        return all(getattr(idx.retriever, "dense").wait_idle(timeout) for idx in indexes)

    def budget(self, inp: ContextInput) -> int:
        """The request's budget: ``max_input_tokens``, or :func:`default_budget` of its model."""
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        return default_budget(inp.model, inp.max_tokens, self.cap)

    def policy_for(self, budget: int, anthropic: bool) -> ComposedPolicy | CacheBreakpoints:
        """The composed policy for one budget (built once, kept: its stepped window and grid
        must stay put from turn to turn)."""
        key = (budget, anthropic)
        with self._lock:
            policy = self._policies.get(key)
            if policy is None:
                recent = max(1, int(budget * self.recent_share))
                # Steps of the whole share: the window grows from the newest turn to the share,
                # then starts again, so the prefix changes once per share of tokens said.
                stepped = SteppedWindow(high_water=recent, step_tokens=recent)
                composed = ComposedPolicy(
                    budget, parts=[self.part], recent=WholeThenStepped(stepped, budget),
                    caps={"recent": budget, "recall": budget},
                    placement={"recall": "user"}, stable_window=True,
                )
                policy = CacheBreakpoints(composed) if anthropic else composed
                self._policies[key] = policy
            return policy

    def may_wait(self, inp: ContextInput) -> bool:
        """Whether building ``inp``'s context may wait on more than this process's CPU and
        store (colloquy.effects.MayWait): with sentence embeddings, once the log no longer
        fits whole (recall embeds the question, waiting its turn for the shared encoder);
        never on keywords alone."""
        if not self.dense:
            return False
        budget = self.budget(inp)
        policy = self.policy_for(budget, is_anthropic(inp.model))
        composed = policy.policy if isinstance(policy, CacheBreakpoints) else policy
        assert isinstance(composed, ComposedPolicy)
        return composed.recent.window_start(inp, budget) > 0

    def build(self, inp: ContextInput) -> Context:
        return self.policy_for(self.budget(inp), is_anthropic(inp.model)).build(inp)


__all__ = ["DEFAULT_BUDGET_CAP", "DEFAULT_NEIGHBOUR_MIN", "DEFAULT_RECALL_CANDIDATES",
           "DEFAULT_RECALL_DEPTH", "DEFAULT_RECENT_SHARE", "DEFAULT_WINDOW_SHARE", "DefaultPolicy",
           "RETRIEVER_CHOICES", "WholeThenStepped", "default_budget"]
