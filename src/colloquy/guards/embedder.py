"""The sentence-embedding model the topic guards use (shared with dense recall)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


class SentenceEmbedder:
    """The sentence-embedding model of ``colloquy[embeddings]`` (shared with dense recall),
    loaded in a background thread from the first check on: loading takes seconds, so until it is
    ready the topic guard judges by keywords instead of holding the turn (and a guard that is
    built but never used loads nothing)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._model: Any = None
        self._ready = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._load, name="topic-embedder", daemon=True).start()

    def _load(self) -> None:
        try:
            from ..embeddings import sentence_model

            self._model = sentence_model()
        except Exception as e:  # noqa: BLE001 - reported by ready()/error, never raised
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._ready.set()

    def ready(self, wait: float | None = 0) -> bool:
        self.start()
        return self._ready.wait(wait) and self._model is not None

    def __call__(self, texts: list[str]) -> list[list[float]]:
        if not self.ready(None):
            raise RuntimeError(f"the embedding model could not be loaded: {self.error}")
        return self._model.encode(list(texts), normalize_embeddings=True,
                                  show_progress_bar=False).tolist()


def default_embedder() -> SentenceEmbedder | None:
    """A :class:`SentenceEmbedder` when ``colloquy[embeddings]`` is installed, else None (checked
    without importing it, so this is cheap)."""
    from ..embeddings import embeddings_available

    return SentenceEmbedder() if embeddings_available() else None


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb) if na and nb else 0.0
