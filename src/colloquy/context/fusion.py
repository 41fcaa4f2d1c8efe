"""Fused ranking for recall: keyword, date, embedding, speaker, neighbour and session signals in
one learned linear score.

Why not one retriever, or reciprocal rank fusion of two: on LoCoMo the evidence a question needs
is often not the unit that matches it best but the one next to it (the answer after a matching
question), in the same session as other matches, said by the person the question names, or on
the date it names; and a unit found only by the embeddings sat below the first ~100 keyword hits
that rank fusion let through. So every unit that either retriever finds (BM25's top ``depth``
and the embeddings' top ``depth``), with its neighbours, is a candidate, and each candidate is
scored by a weighted sum of signals, each scaled to [0, 1] within the question:

=================  ===============================================================================
``body``           BM25 of the unit's own text (column 1 of the index)
``context``        BM25 of its neighbours' text (column 2)
``dates``          BM25 of its date tokens against the question's (column 3; context/dates.py)
``dense``          cosine similarity with the question, as a z-score over the log's units,
                   negatives cut to 0
``speaker``        1 when the question names the unit's speaker (``meta["speaker"]``)
``neighbour_text``  the higher ``body`` of the unit just before and just after it
``neighbour_dense`` the same for ``dense``
``session``        the best ``body + dense`` of its session (units less than an hour apart)
=================  ===============================================================================

The weights were fitted on the five LoCoMo conversations of the development split by coordinate
ascent of evidence recall at 4,000 and 8,000 tokens, and checked leave-one-conversation-out
(tuned on four, measured on the fifth): bench/memory.py prints both figures, and the variants
without each signal. They are fitted to kinds of questions (who, when, what happened next to
what), not to any conversation; no annotation of the data set is read.
"""

from __future__ import annotations

import math
import operator
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .dates import query_date_tokens

if TYPE_CHECKING:
    from .recall import ConversationIndex
    from .retrieval import SignalRetriever


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the fused recall score (module docstring); defaults fitted on LoCoMo."""

    body: float = 1.0
    context: float = 0.2
    dates: float = 1.5
    dense: float = 1.0
    speaker: float = 1.5
    neighbour_text: float = 0.7
    neighbour_dense: float = 0.5
    session: float = 0.3

    def as_list(self) -> list[float]:
        return list(asdict(self).values())


#: The signals' names, in the order of their columns and weights.
FIELDS = tuple(FusionWeights.__dataclass_fields__)


#: Candidates taken from each retriever before fusion.
DEFAULT_DEPTH = 300


def _scaled(values: dict[int, float]) -> dict[int, float]:
    top = max(values.values(), default=0.0)
    return {k: v / top for k, v in values.items()} if top > 0 else {}


def speakers_named(query: str, speakers: Iterable[str]) -> set[str]:
    """The speaker names (``meta["speaker"]`` of the log's messages) the query mentions."""
    out = set()
    for name in set(speakers):
        if name and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", query, re.IGNORECASE):
            out.add(name)
    return out


def fused_columns(
    index: ConversationIndex, retriever: SignalRetriever, query: str, query_time: float | None,
    before: int | None, depth: int = DEFAULT_DEPTH, dense_signals: bool = True,
) -> tuple[list[int], list[list[float]]]:
    """The candidate units with key < ``before`` and their signals, one column per field of
    :class:`FusionWeights` (in its order), one value per candidate. ``query_time`` (seconds)
    resolves the query's relative dates ("yesterday"); ``dense_signals=False`` skips the
    embeddings. Columns, not rows: each is one list comprehension, which is what keeps fusion
    at about a millisecond for its ~900 candidates (bench/turns.py)."""
    keys = index.keys
    n = bisect_right(keys, before - 1) if before is not None else len(keys)
    if n == 0 or not query.strip():
        return [], [[] for _ in FIELDS]
    pos = index.position
    dates = query_date_tokens(query, query_time)
    body: dict[int, float] = {}
    ctx: dict[int, float] = {}
    dat: dict[int, float] = {}
    for key, b, c, d in retriever.bm25.columns(query, depth, before, dates):
        p = pos[key]
        body[p], ctx[p], dat[p] = max(b, 0.0), max(c, 0.0), max(d, 0.0)
    candidates = set(body)
    body, ctx, dat = _scaled(body), _scaled(ctx), _scaled(dat)
    dget: dict[int, float] = {}
    if retriever.dense is not None and dense_signals:
        # By key, not by place: the dense index may lack units (the newest one, indexed once
        # its next neighbour is known; those the background embedder has not reached yet:
        # context/background.py) and may hold them in another order. Missing units read 0.
        dkeys, cos = retriever.dense.similarities(query, before)
        if len(cos):
            import numpy as np

            z = np.maximum((cos - cos.mean()) / (float(cos.std()) + 1e-9), 0.0)
            top = float(z.max())
            zl = (z / top if top > 0 else z).tolist()
            dpos = [pos[k] for k in dkeys]
            dget = dict(zip(dpos, zl))
            k = min(depth, len(zl))
            candidates.update(dpos[int(i)] for i in np.argpartition(-z, k - 1)[:k])
    dense = bool(dget)
    candidates |= {p + d for p in list(candidates) for d in (-1, 1) if 0 <= p + d < n}
    order = sorted(candidates)
    zero = [0.0] * len(order)
    get = body.get
    bv = [get(p, 0.0) for p in order]
    dv = [dget.get(p, 0.0) for p in order] if dense else zero
    sessions = index.sessions
    best_in_session: dict[int, float] = {}
    for p, v in zip(order, map(operator.add, bv, dv)):
        if v > best_in_session.get(sessions[p], 0.0):
            best_in_session[sessions[p]] = v
    session_top = max(best_in_session.values(), default=0.0) or 1.0
    named = speakers_named(query, index.speaker_names)
    speakers = index.speakers
    cols: list[list[float]] = [
        bv,
        [ctx.get(p, 0.0) for p in order],
        [dat.get(p, 0.0) for p in order],
        dv,
        [1.0 if speakers[p] in named else 0.0 for p in order] if named else zero,
        [max(get(p - 1, 0.0), get(p + 1, 0.0)) for p in order],
        [max(dget.get(p - 1, 0.0), dget.get(p + 1, 0.0)) for p in order] if dense else zero,
        [best_in_session.get(sessions[p], 0.0) / session_top for p in order],
    ]
    return [keys[p] for p in order], cols


def fused_features(
    index: ConversationIndex, retriever: SignalRetriever, query: str, query_time: float | None,
    before: int | None, depth: int = DEFAULT_DEPTH, dense_signals: bool = True,
) -> tuple[list[int], list[list[float]]]:
    """:func:`fused_columns` as rows: one list of signals per candidate (for tuning)."""
    keys, cols = fused_columns(index, retriever, query, query_time, before, depth, dense_signals)
    return keys, [list(row) for row in zip(*cols)]


def rank_columns(keys: Sequence[int], cols: Sequence[Sequence[float]],
                 weights: FusionWeights) -> list[tuple[int, float]]:
    """(key, weighted score) of the candidates with a positive score, best first (ties: older
    first); ``cols`` as :func:`fused_columns` gives them."""
    scores = [0.0] * len(keys)
    for w, col in zip(weights.as_list(), cols):
        if w:
            scores = list(map(operator.add, scores, map(w.__mul__, col)))
    # Sorted as (-score, key) tuples, compared natively: no key function per candidate.
    ranked = [(-v, k) for k, v in zip(keys, scores) if v > 0 and not math.isnan(v)]
    ranked.sort()
    return [(k, -v) for v, k in ranked]


def rank_by(keys: Sequence[int], rows: Sequence[Sequence[float]],
            weights: FusionWeights) -> list[tuple[int, float]]:
    """:func:`rank_columns` of candidates given as rows (:func:`fused_features`)."""
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in FIELDS]
    return rank_columns(keys, cols, weights)


def fused_ranking(
    index: ConversationIndex, retriever: SignalRetriever, query: str, query_time: float | None,
    before: int | None, weights: FusionWeights, depth: int = DEFAULT_DEPTH,
) -> list[tuple[int, float]]:
    """(key, score) of the candidate units with key < ``before``, best first (ties: older
    first); only units with a positive score."""
    dense = weights.dense + weights.neighbour_dense + weights.session > 0
    keys, cols = fused_columns(index, retriever, query, query_time, before, depth, dense)
    return rank_columns(keys, cols, weights)


__all__ = ["DEFAULT_DEPTH", "FIELDS", "FusionWeights", "fused_columns", "fused_features",
           "fused_ranking", "rank_by", "rank_columns",
           "speakers_named"]
