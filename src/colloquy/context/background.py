"""Sentence embeddings for recall that never hold a turn: the default policy's hybrid retriever.

Why: loading torch and the sentence model took 38 s on a busy 2-core machine (load 10), and a
conversation resumed by a new process would embed its whole log (thousands of units) before its
first reply. The default policy must not make a chat wait for that, so:

* the model loads in a daemon thread from the first recall on (colloquy.embeddings
  :func:`~colloquy.embeddings.load_in_background`); until it is loaded, recall is BM25 alone;
* units are queued as the recall index adds them and embedded by one worker thread per process
  (:class:`EmbeddingWorker`), :data:`WORKER_BATCH` at a time, round robin over the
  conversations; a turn embeds inline only a backlog of at most :data:`TURN_BATCH` units (the
  few that just left the recent window, about the cost of embedding the question), so once warm
  every turn ranks over every unit;
* until then the dense signals cover the units embedded so far (a unit not embedded yet scores 0
  on them and is still found by BM25): the hybrid ranking joins as coverage grows.

Encode calls are serialised (colloquy.embeddings), so a turn's question embedding waits at most
for one worker batch. A deleted conversation's queue, vectors and cached question embeddings are
dropped with its recall index (:meth:`BackgroundEmbeddings.close`, via
RecallPart.forget_conversations).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .. import embeddings
from .retrieval import Item, QueryCache, SignalRetriever

#: Units the worker embeds per encode call: small, so that a turn's question never waits long
#: for the shared encoder (about 16 short messages take ~0.2 s with one torch thread).
WORKER_BATCH = 16
#: A turn embeds its backlog inline when it is at most this many units (else the worker does).
TURN_BATCH = 8


class BackgroundEmbeddings:
    """A dense retriever whose units are embedded off the turn's path (module docstring).

    Keys may arrive in any order (a resumed log is indexed newest first): vectors are kept with
    their keys, and :meth:`similarities` filters by key. ``embed_seconds`` is the time spent
    embedding units, in the worker or inline (the bench reports it per turn)."""

    #: Units may be added in any key order (ConversationIndex may backfill a resumed log).
    any_order = True

    def __init__(self, model: str | None = None, worker: EmbeddingWorker | None = None) -> None:
        import numpy as np

        self._np = np
        self.model = model
        self._worker = worker or default_worker()
        self._pending: list[tuple[int, str]] = []
        self._keys: Any = np.zeros(0, dtype="int64")
        self._vecs: Any = None
        self._n = 0
        self._lock = threading.Lock()
        self._queries = QueryCache()
        self._inflight = 0
        self.added = 0
        self.closed = False
        self.embed_seconds = 0.0

    # -- the Retriever protocol ----------------------------------------------------------------

    def add(self, items: Sequence[Item]) -> None:
        """Queue units to embed (cheap: no model call here)."""
        if not items or self.closed:
            return
        with self._lock:
            self._pending.extend((int(i[0]), i[1]) for i in items)
            self.added += len(items)
        self._worker.submit(self)

    def set_context(self, key: int, text: str, context: str) -> None:
        """Embeddings are of the unit's own text: a neighbour's words would blur them."""

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]:
        keys, cos = self.similarities(query, before)
        order = sorted(range(len(keys)), key=lambda i: (-float(cos[i]), keys[i]))[:limit]
        return [(keys[i], float(cos[i])) for i in order]

    # -- state ------------------------------------------------------------------------------------

    @property
    def embedded(self) -> int:
        """Units embedded so far."""
        return self._n

    @property
    def backlog(self) -> int:
        """Units queued, not embedded yet."""
        return len(self._pending)

    def ready(self) -> bool:
        """Whether the model is loaded (starts loading it in the background if not: never
        waits)."""
        return embeddings.load_in_background(self.model) and not self.closed

    def close(self) -> None:
        """Drop everything held about the conversation: queue, vectors, question cache."""
        with self._lock:
            self.closed = True
            self._pending.clear()
            self._queries.close()
            self._keys = self._np.zeros(0, dtype="int64")
            self._vecs = None
            self._n = 0

    # -- embedding ------------------------------------------------------------------------------

    def embed_pending(self, limit: int) -> int:
        """Embed up to ``limit`` queued units (the model must be loaded); return how many."""
        with self._lock:
            batch, self._pending[:limit] = self._pending[:limit], []
            self._inflight += len(batch)
        if not batch:
            return 0
        t0 = time.perf_counter()
        try:
            vecs = embeddings.embed([text for _, text in batch], self.model)
        finally:
            with self._lock:
                self._inflight -= len(batch)
                self.embed_seconds += time.perf_counter() - t0
        np = self._np
        with self._lock:
            if self.closed:
                return 0
            n = self._n
            if self._vecs is None or n + len(batch) > len(self._vecs):
                grown = np.zeros((max(64, 2 * n, n + len(batch)), vecs.shape[1]), dtype="float32")
                if self._vecs is not None:
                    grown[:n] = self._vecs[:n]
                self._vecs = grown
                keys = np.zeros(len(grown), dtype="int64")
                keys[:n] = self._keys[:n]
                self._keys = keys
            self._vecs[n:n + len(batch)] = vecs
            self._keys[n:n + len(batch)] = [k for k, _ in batch]
            self._n = n + len(batch)
        return len(batch)

    def _query(self, text: str) -> Any:
        return self._queries.get(text, lambda t: embeddings.embed([t], self.model)[0])

    def similarities(self, query: str, before: int | None = None) -> tuple[list[int], Any]:
        """(keys, cosine similarities) of the embedded units with key < ``before``; none while
        the model loads. A backlog of at most :data:`TURN_BATCH` units is embedded first."""
        np = self._np
        if not query.strip() or not self.ready():
            return [], np.zeros(0, dtype="float32")
        if 0 < len(self._pending) <= TURN_BATCH:
            self.embed_pending(TURN_BATCH)
        q = self._query(query)
        with self._lock:
            if not self._n:
                return [], np.zeros(0, dtype="float32")
            keys, vecs = self._keys[:self._n], self._vecs[:self._n]
            if before is not None:
                mask = keys < before
                keys, vecs = keys[mask], vecs[mask]
            return keys.tolist(), vecs @ q

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds) until the model is loaded and the queue is empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not embeddings.wait_loaded(self.model, left):
            return False
        while (self._pending or self._inflight) and not self.closed:
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._worker.submit(self)
            time.sleep(0.01)
        return True


class EmbeddingWorker:
    """One daemon thread that embeds the queued units of every conversation, round robin,
    :data:`WORKER_BATCH` at a time, once the model is loaded. Holds its conversations weakly: a
    dropped recall index stops being embedded."""

    def __init__(self, batch: int = WORKER_BATCH) -> None:
        self.batch = batch
        self._queue: OrderedDict[int, weakref.ref[BackgroundEmbeddings]] = OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, dense: BackgroundEmbeddings) -> None:
        with self._cond:
            self._queue[id(dense)] = weakref.ref(dense)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="colloquy-embeddings-worker")
                self._thread.start()
            self._cond.notify()

    def _next(self) -> BackgroundEmbeddings | None:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            _, ref = self._queue.popitem(last=False)
        return ref()

    def _run(self) -> None:
        while True:
            dense = self._next()
            if dense is None or dense.closed:
                continue
            if not embeddings.wait_loaded(dense.model):
                continue  # the model failed to load (embeddings.load_error): BM25 stays
            try:
                dense.embed_pending(self.batch)
            except Exception:  # noqa: BLE001 - a failed batch leaves those units to BM25
                continue
            if dense.backlog and not dense.closed:
                self.submit(dense)  # to the back of the queue: round robin
            del dense


_WORKER: EmbeddingWorker | None = None
_WORKER_LOCK = threading.Lock()


def default_worker() -> EmbeddingWorker:
    """The process's embedding worker (started on first use)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = EmbeddingWorker()
        return _WORKER


def background_hybrid() -> SignalRetriever:
    """BM25 with background sentence embeddings: the default policy's retriever when the
    embeddings extra is installed."""
    return SignalRetriever(dense=BackgroundEmbeddings())


__all__ = ["TURN_BATCH", "WORKER_BATCH", "BackgroundEmbeddings",
           "EmbeddingWorker", "background_hybrid", "default_worker"]
