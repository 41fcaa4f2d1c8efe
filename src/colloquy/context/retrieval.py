"""Retrievers of the recall index: BM25 (SQLite FTS5), sentence embeddings, and their fusions.

Each indexes text units keyed by an int (a unit's first stored seq; see context/recall.py):

* :class:`BM25Retriever`: SQLite FTS5 with its built-in BM25 ranking and the porter stemmer, in
  an in-memory database (stdlib only; inserts are incremental, no rebuild). Three columns: the
  unit's own text, its neighbours' text, and its date tokens (context/dates.py).
* :class:`DenseRetriever`: cosine similarity of sentence embeddings (colloquy.embeddings).
* :class:`HybridRetriever`: rankings fused by weighted reciprocal rank fusion (RRF).
* :class:`SignalRetriever`: BM25 and, optionally, dense similarity kept side by side, so the
  recall part can fuse their *scores* with what it knows of the units (context/fusion.py). It is
  what ``RecallPart("bm25")`` and ``RecallPart("hybrid")`` use.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..embeddings import dimension, embed
from ..errors import ConfigError


#: Up to this many units, BM25 queries keep all their terms (see BM25Retriever); 0: a query is
#: capped at every size (on LoCoMo the cap costs no measured recall: bench/memory.py's
#: ``default-exact`` row, every term kept, keeps the same 0.883 of the evidence at 4k)...
EXACT_UNITS = 0
#: ...beyond, the units the terms of one query name may add up to about this many, and a query
#: ranks at most this many units (the newest that match).
MAX_POSTINGS = 600

#: An indexed unit: (key, text, context) or (key, text, context, dates).
Item = tuple[int, str, str] | tuple[int, str, str, str]


@runtime_checkable
class Retriever(Protocol):
    """An incremental index of text units keyed by an int (the unit's first stored seq)."""

    @property
    def added(self) -> int:
        """How many units were ever added (tests use it to check indexing is incremental)."""
        ...

    def add(self, items: Sequence[Item]) -> None:
        """Index new units as (key, text, context[, dates]); keys are increasing and never
        re-added. ``context`` is the text of the neighbouring units, which a retriever may weigh
        less; ``dates`` the unit's date tokens (context/dates.py), space-separated."""
        ...

    def set_context(self, key: int, text: str, context: str) -> None:
        """Replace a unit's context (the unit before a new one learns its next neighbour)."""
        ...

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]:
        """Up to ``limit`` (key, score) pairs, best first; only keys < ``before`` when given."""
        ...


_WORD = re.compile(r"\w+", re.UNICODE)
#: Words too common to help ranking; dropping them keeps FTS5 OR-queries small and fast.
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her his how "
    "i if in into is it its me my of on or our she so than that the their them then there these "
    "they this to us was we were what when where which who whom why will with would you your "
    "about any just also did not no yes ever".split()
)


def query_terms(text: str, max_terms: int = 32) -> list[str]:
    """The distinct content words of a query, in order."""
    words = [w.lower() for w in _WORD.findall(text)]
    terms = [w for w in dict.fromkeys(words) if w not in STOPWORDS and len(w) > 1]
    return terms[:max_terms] or list(dict.fromkeys(words))[:max_terms]


class BM25Retriever:
    """BM25 through SQLite FTS5 (``bm25()`` ranking, porter stemming), in memory.

    Three columns: the unit's own text; its neighbours' text, weighted ``context_weight``: a
    question rarely repeats the words of the answer, but often those of the exchange around it
    (on LoCoMo this lifts evidence found in the top 60 from 0.68 to 0.80); and its date tokens
    (the day it was said, the days its "yesterday"s point to), weighted ``dates_weight``, matched
    by the date tokens of the query. FTS5 inserts are incremental, so adding a turn costs the
    same at turn 10 and turn 10,000.

    A query reads the posting list of every term it names, so in a long log a question with
    common words ("now", "week", "one") touches nearly every unit: 20,000 units took FTS5 about
    0.4 s per query on a busy 2-core machine. So once the index holds more than ``exact_units``
    units (by default always), a query keeps its rarest terms (by how many units say each word,
    in their text or their neighbours', counted as units are added) while their units add up to
    at most ``max_postings``, and drops the rest: the terms that would cost the most carry the
    least weight in BM25 (their inverse document frequency is lowest). When even its rarest term
    is said in more units than that (a small vocabulary, a very long log), the query ranks only
    the newest ``max_postings`` units that match it: the cost of a query is bounded whatever
    the log's length, and recent mentions win over old ones.
    """

    def __init__(self, context_weight: float = 0.3, dates_weight: float = 1.0,
                 max_postings: int = MAX_POSTINGS, exact_units: int = EXACT_UNITS) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE units USING fts5(body, context, dates, "
            "tokenize='porter unicode61')"
        )
        self._lock = threading.Lock()
        self.context_weight = float(context_weight)
        self.dates_weight = float(dates_weight)
        self.max_postings = int(max_postings)
        self.exact_units = int(exact_units)
        #: Units saying each word (lowercased, unstemmed) or date token: what a term costs.
        self.df: Counter[str] = Counter()
        self.added = 0
        self.updated = 0

    @staticmethod
    def _row(item: Item) -> tuple[int, str, str, str]:
        return (item[0], item[1], item[2], item[3] if len(item) > 3 else "")  # type: ignore[misc]

    def add(self, items: Sequence[Item]) -> None:
        rows = [self._row(i) for i in items]
        with self._lock:
            self._db.executemany("INSERT INTO units (rowid, body, context, dates) VALUES (?, ?, ?, ?)",
                                 rows)
            for _, body, context, dates in rows:
                words = {w.lower() for w in _WORD.findall(f"{body} {context}")}
                self.df.update(words | set(dates.split()))
            self.added += len(items)

    def affordable(self, terms: Sequence[str]) -> list[str]:
        """All of ``terms`` up to ``exact_units`` units; beyond, the rarest of them whose units
        add up to at most ``max_postings`` (at least the rarest one), in their given order."""
        if self.added <= self.exact_units:
            return list(terms)
        cost = 0
        kept: set[str] = set()
        for term in sorted(set(terms), key=lambda t: self.df.get(t, 0)):
            cost += self.df.get(term, 0)
            if kept and cost > self.max_postings:
                break
            kept.add(term)
        return [t for t in terms if t in kept]

    def set_context(self, key: int, text: str, context: str) -> None:
        # DELETE + INSERT: an FTS5 UPDATE of one column costs ~50x more on a large index.
        with self._lock:
            row = self._db.execute("SELECT dates FROM units WHERE rowid = ?", (key,)).fetchone()
            self._db.execute("DELETE FROM units WHERE rowid = ?", (key,))
            self._db.execute("INSERT INTO units (rowid, body, context, dates) VALUES (?, ?, ?, ?)",
                             (key, text, context, row[0] if row else ""))
            self.updated += 1

    @staticmethod
    def _match(terms: Sequence[str]) -> str:
        return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)

    def search(self, query: str, limit: int, before: int | None = None,
               dates: Sequence[str] = ()) -> list[tuple[int, float]]:
        return [(k, b + self.context_weight * c + self.dates_weight * d)
                for k, b, c, d in self.columns(query, limit, before, dates)]

    def columns(self, query: str, limit: int, before: int | None = None,
                dates: Sequence[str] = ()) -> list[tuple[int, float, float, float]]:
        """Up to ``limit`` (key, body, context, dates) BM25 scores (higher is better), best first
        by their weighted sum; ``dates`` are the query's date tokens."""
        terms = self.affordable([*query_terms(query), *dates])
        if not terms or limit <= 0:
            return []
        where = "units MATCH ?"
        args: list[Any] = [self._match(terms)]
        if before is not None:
            where += " AND rowid < ?"
            args.append(before)
        with self._lock:
            if self.added > self.exact_units and self.added > self.max_postings:
                # The newest max_postings matches bound the units ranked (class docstring):
                # FTS5 walks a doclist backwards by rowid without ranking it.
                floor = self._db.execute(
                    f"SELECT rowid FROM units WHERE {where} ORDER BY rowid DESC LIMIT 1 OFFSET ?",
                    [*args, self.max_postings - 1]).fetchone()
                if floor is not None:
                    where += " AND rowid >= ?"
                    args.append(floor[0])
            # Ranked here rather than by an ORDER BY on a fourth bm25() (which doubled the
            # query's time): once capped, the rows are at most max_postings.
            # The dates column holds only date tokens: with none in the query it scores 0.
            dated = "bm25(units, 0.0, 0.0, 1.0)" if dates else "0.0"
            rows = self._db.execute(
                "SELECT rowid, bm25(units, 1.0, 0.0, 0.0), bm25(units, 0.0, 1.0, 0.0), "
                f"{dated} FROM units WHERE {where}", args).fetchall()
        cw, dw = self.context_weight, self.dates_weight
        # Sorted as (weighted sum, rowid, ...) tuples, compared natively (rowids are unique, so
        # the columns after it never decide): no key function per row.
        ranked = [(b + cw * c + dw * d, k, b, c, d) for k, b, c, d in rows]
        ranked.sort()
        # FTS5 scores are "lower is better"; a column with no match scores (about) zero.
        return [(int(k), -float(b), -float(c), -float(d)) for _, k, b, c, d in ranked[:limit]]


#: Question embeddings a dense retriever caches (one conversation's: dropped with its index).
QUERY_CACHE_SIZE = 64


class QueryCache:
    """The embeddings of a conversation's recent questions, newest last (a question is often
    ranked again, e.g. per tool round): at most :data:`QUERY_CACHE_SIZE`, least recently used
    out first. Thread-safe; the embedding itself runs outside the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vecs: OrderedDict[str, Any] = OrderedDict()
        self.closed = False

    def get(self, text: str, embed: Callable[[str], Any]) -> Any:
        """The embedding of ``text``: cached, or ``embed(text)`` (then cached unless closed)."""
        with self._lock:
            hit = self._vecs.get(text)
            if hit is not None:
                self._vecs.move_to_end(text)
                return hit
        vec = embed(text)
        with self._lock:
            if not self.closed:
                self._vecs[text] = vec
                while len(self._vecs) > QUERY_CACHE_SIZE:
                    self._vecs.popitem(last=False)
        return vec

    def __len__(self) -> int:
        return len(self._vecs)

    def close(self) -> None:
        """Forget every question (the conversation was deleted) and cache none from now on."""
        with self._lock:
            self.closed = True
            self._vecs.clear()


class DenseRetriever:
    """Cosine similarity of sentence embeddings; new units are embedded once, as they arrive,
    and recent query embeddings are cached (a query is often re-ranked, e.g. per tool round),
    per retriever, so a deleted conversation's questions go with its index (:meth:`close`)."""

    def __init__(self, model: str | None = None) -> None:
        import numpy as np

        self._np = np
        self._model_name = model
        self._keys: list[int] = []
        self._vecs: Any = np.zeros((64, dimension(model)), dtype="float32")  # grows by doubling
        self._lock = threading.Lock()
        self._queries = QueryCache()
        self.added = 0

    def _embed(self, texts: Sequence[str]) -> Any:
        return embed(texts, self._model_name)

    def _query(self, text: str) -> Any:
        return self._queries.get(text, lambda t: self._embed([t])[0])

    def close(self) -> None:
        """Drop the vectors and cached question embeddings (the conversation was deleted)."""
        with self._lock:
            self._queries.close()
            self._keys = []
            self._vecs = self._np.zeros((0, self._vecs.shape[1]), dtype="float32")

    def set_context(self, key: int, text: str, context: str) -> None:
        """Embeddings are of the unit's own text: a neighbour's words would blur them."""

    def add(self, items: Sequence[Item]) -> None:
        if not items:
            return
        vecs = self._embed([item[1] for item in items])
        with self._lock:
            n = len(self._keys)
            if n + len(vecs) > len(self._vecs):
                grown: Any = self._np.zeros((max(2 * len(self._vecs), n + len(vecs)), self._vecs.shape[1]),
                                       dtype="float32")
                grown[:n] = self._vecs[:n]
                self._vecs = grown
            self._vecs[n:n + len(vecs)] = vecs
            self._keys.extend(item[0] for item in items)
            self.added += len(items)

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]:
        if not query.strip() or limit <= 0:
            return []
        keys, scores = self.similarities(query, before)
        if not keys:
            return []
        np = self._np
        k = min(limit, len(keys))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(keys) else np.arange(len(keys))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(keys[i], float(scores[i])) for i in top]

    def similarities(self, query: str, before: int | None = None) -> tuple[list[int], Any]:
        """(keys, cosine similarities as a numpy array) of every unit with key < ``before``."""
        q = self._query(query)
        with self._lock:
            n = bisect_right(self._keys, before - 1) if before is not None else len(self._keys)
            if n == 0:
                return [], self._np.zeros(0, dtype="float32")
            return self._keys[:n], self._vecs[:n] @ q


class HybridRetriever:
    """BM25 and dense rankings fused by weighted reciprocal rank fusion:
    score = sum of weight / (k + rank) over the retrievers.

    RRF needs no score calibration between the two (BM25 scores are unbounded, cosines are not),
    which is why it is the usual default for hybrid search. The dense ranking counts half by
    default: a small sentence model matches topics, while questions about a conversation name
    specific people and events; on LoCoMo at 4k tokens, weights (1, 0.5) give 0.854 evidence
    recall where equal weights give 0.846 and BM25 alone 0.842 (``bench/memory.py``)."""

    def __init__(self, *retrievers: Retriever, k: int = 60, depth: int = 50,
                 weights: Sequence[float] | None = None) -> None:
        self.retrievers = retrievers or (BM25Retriever(), DenseRetriever())
        self.weights = tuple(weights) if weights is not None else (
            (1.0, 0.5) if not retrievers else (1.0,) * len(self.retrievers))
        if len(self.weights) != len(self.retrievers) or min(self.weights) < 0:
            raise ConfigError("hybrid recall needs one non-negative weight per retriever")
        self.k = k
        self.depth = depth

    @property
    def added(self) -> int:
        return max(r.added for r in self.retrievers)

    def add(self, items: Sequence[Item]) -> None:
        for r in self.retrievers:
            r.add(items)

    def set_context(self, key: int, text: str, context: str) -> None:
        for r in self.retrievers:
            r.set_context(key, text, context)

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]:
        fused: dict[int, float] = {}
        for weight, r in zip(self.weights, self.retrievers):
            for rank, (key, _) in enumerate(r.search(query, max(limit, self.depth), before), 1):
                fused[key] = fused.get(key, 0.0) + weight / (self.k + rank)
        return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


class DenseSignals(Protocol):
    """What fusion needs of a dense retriever: :class:`DenseRetriever`, or the default policy's
    background one (context/background.py), whose keys may come in any order."""

    added: int

    def add(self, items: Sequence[Item]) -> None: ...

    def set_context(self, key: int, text: str, context: str) -> None: ...

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]: ...

    def similarities(self, query: str, before: int | None = None) -> tuple[list[int], Any]:
        """(keys, cosine similarities as a numpy array) of the units with key < ``before``."""
        ...


class SignalRetriever:
    """BM25 and (with ``dense``) sentence-embedding similarity side by side: the signals the
    recall part fuses with what it knows of each unit (context/fusion.py). ``dense=True``
    embeds each unit as it is added (:class:`DenseRetriever`); a :class:`DenseSignals` object is
    used as given. On its own, ``search`` ranks by BM25 (or, with dense, by RRF of both)."""

    def __init__(self, dense: bool | DenseSignals = False, context_weight: float = 0.3,
                 dates_weight: float = 1.0) -> None:
        self.bm25 = BM25Retriever(context_weight, dates_weight)
        self.dense: DenseSignals | None = (
            DenseRetriever() if dense is True else (dense if not isinstance(dense, bool) else None))

    @property
    def added(self) -> int:
        return self.bm25.added

    def add(self, items: Sequence[Item]) -> None:
        self.bm25.add(items)
        if self.dense is not None:
            self.dense.add(items)

    def set_context(self, key: int, text: str, context: str) -> None:
        self.bm25.set_context(key, text, context)

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]:
        if self.dense is None:
            return self.bm25.search(query, limit, before)
        return HybridRetriever(self.bm25, self.dense, weights=(1.0, 0.5)).search(query, limit, before)


RETRIEVERS: dict[str, Callable[[], Retriever]] = {
    "bm25": SignalRetriever,
    "dense": DenseRetriever,
    "hybrid": lambda: SignalRetriever(dense=True),
    "rrf": HybridRetriever,
}


def make_retriever(kind: str | Callable[[], Retriever]) -> Retriever:
    if callable(kind):
        return kind()
    try:
        return RETRIEVERS[kind]()
    except KeyError:
        raise ConfigError(f"unknown retriever {kind!r}; choose one of {sorted(RETRIEVERS)}") from None


__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "DenseSignals",
    "HybridRetriever",
    "Item",
    "RETRIEVERS",
    "Retriever",
    "STOPWORDS",
    "SignalRetriever",
    "make_retriever",
    "query_terms",
]
