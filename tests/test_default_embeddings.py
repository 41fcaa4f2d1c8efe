"""The default policy goes hybrid when the embeddings extra is installed, without ever making a
turn wait for the model: it loads in the background, units are embedded by a background worker,
and turns rank by BM25 until then (context/background.py). A deleted conversation leaves no
embedding behind.

The slow model here is a test double for the sentence model only (its loader blocks until the
test lets it finish); the last test runs the real all-MiniLM-L6-v2 of the dev extra."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from colloquy import Chat, MemoryStore
from colloquy import embeddings
from colloquy.context import background
from colloquy.context.background import BackgroundEmbeddings
from colloquy.context.default import DefaultPolicy
from colloquy.errors import ConfigError
from colloquy.models import EchoModel
from colloquy.rights import delete_user
from colloquy.store import Store

PET = "My new housemate is a tabby moggy; she answers to Biscuit."
QUESTION = "What name did the feline get this week?"
FILLER = [
    "How was your weekend? Mine was quiet, I read a novel about sailors and storms at sea.",
    "Any plans for the evening? Probably cooking pasta and watching an old film again.",
    "Did you see the match yesterday? It went to extra time and it was very tense indeed.",
    "The weather is grey again, but the garden really needs the rain this week, truly.",
]
#: Words the fake model treats as one meaning (what a sentence model learns, in miniature).
SAME = {"feline": "cat", "moggy": "cat", "kitten": "cat", "cat": "cat"}


class SlowFakeSentenceModel:
    """Stands in for the sentence model: a bag of the meanings of the longer words (five
    letters or more: the content words, roughly), hashed into 64 dimensions."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts: Sequence[str], **_: Any) -> Any:
        import numpy as np

        out = np.zeros((len(texts), 64), dtype="float32")
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]{5,}", text.lower()):
                meaning = SAME.get(word, word)
                out[i, int(hashlib.md5(meaning.encode()).hexdigest(), 16) % 64] += 1.0
            out[i] /= max(1e-9, float(np.linalg.norm(out[i])))  # unit length, like the real one
        self.encoded += len(texts)
        return out


@pytest.fixture
def slow_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """A fake model whose load waits until the returned event is set; fresh model caches and a
    fresh worker, so no real model loaded by another test is used."""
    release = threading.Event()
    fake = SlowFakeSentenceModel()

    def load(model: str | None) -> Any:
        release.wait(60)
        return fake

    monkeypatch.setattr(embeddings, "_load", load)
    monkeypatch.setattr(embeddings, "_MODELS", {})
    monkeypatch.setattr(embeddings, "_LOADS", {})
    monkeypatch.setattr(embeddings, "_LOAD_ERRORS", {})
    monkeypatch.setattr(embeddings, "embeddings_available", lambda: True)
    monkeypatch.setattr(background, "_WORKER", None)
    yield release
    release.set()


def request_text(model: EchoModel) -> str:
    assert model.last_request is not None
    return json.dumps(model.last_request.to_anthropic())


def talk(chat: Chat, n: int = 24) -> None:
    chat.send(PET)
    for i in range(n):
        chat.send(f"{FILLER[i % len(FILLER)]} ({i})")


def test_auto_is_hybrid_only_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DefaultPolicy().retriever == "auto"
    assert DefaultPolicy().dense  # the dev extra is installed
    assert not DefaultPolicy(retriever="bm25").dense
    monkeypatch.setattr("colloquy.context.default.embeddings_available", lambda: False)
    assert not DefaultPolicy().dense
    with pytest.raises(ConfigError, match="embeddings extra"):
        DefaultPolicy(retriever="hybrid")
    with pytest.raises(ConfigError, match="auto, bm25, hybrid"):
        DefaultPolicy(retriever="dense")


def test_turns_never_wait_for_the_model_and_go_hybrid_once_it_is_ready(
        slow_model: threading.Event) -> None:
    model = EchoModel()
    policy = DefaultPolicy(600)
    chat = Chat(model, store=MemoryStore(), policy=policy, title_model=False)
    done = threading.Event()

    def cold_turns() -> None:
        talk(chat)
        chat.send(QUESTION)
        done.set()

    # The model's load is held back the whole time: every turn must complete anyway.
    worker = threading.Thread(target=cold_turns, daemon=True)
    worker.start()
    assert done.wait(60), "a turn waited for the embedding model"
    cold = request_text(model)
    assert "<earlier_excerpts>" in cold  # recall ran (by BM25)...
    assert "Biscuit" not in cold  # ...which cannot find a pet named by other words
    assert not embeddings.model_loaded()

    slow_model.set()
    assert policy.wait_warm(60)
    dense = next(iter(policy.part._indexes.values())).retriever.dense  # type: ignore[attr-defined]
    assert isinstance(dense, BackgroundEmbeddings) and dense.embedded >= 20 and not dense.backlog
    chat.send(QUESTION)
    assert "Biscuit" in request_text(model)  # the embeddings found it


def test_a_resumed_long_log_is_embedded_in_the_background(slow_model: threading.Event) -> None:
    store = MemoryStore()
    first = Chat(EchoModel(), store=store, policy=DefaultPolicy(600, retriever="bm25"),
                 title_model=False)
    talk(first, 80)
    # A new process resumes the log (indexed newest first, 50 messages a build): its turns
    # queue the units and answer by BM25 while the model loads.
    model = EchoModel()
    policy = DefaultPolicy(600)
    policy.part.resume_chunk = 50
    chat = Chat(model, store=store, policy=policy, session_id=first.session_id,
                title_model=False)
    asked = "What name did the feline get?"
    for _ in range(4):  # the whole log indexed by BM25, none of it embedded
        chat.send(asked)
    dense = next(iter(policy.part._indexes.values())).retriever.dense  # type: ignore[attr-defined]
    assert dense.added > 150 and dense.embedded == 0
    assert "Biscuit" not in request_text(model)
    slow_model.set()
    assert policy.wait_warm(60) and dense.embedded == dense.added
    chat.send(asked)
    assert "Biscuit" in request_text(model)  # the oldest unit, embedded out of key order


def test_deleting_a_user_drops_their_embeddings(slow_model: threading.Event, store: Store) -> None:
    slow_model.set()
    policy = DefaultPolicy(600)
    chat = Chat(EchoModel(), store=store, policy=policy, user_id="u1", title_model=False)
    talk(chat)
    chat.send(QUESTION)
    assert policy.wait_warm(60)
    dense = next(iter(policy.part._indexes.values())).retriever.dense  # type: ignore[attr-defined]
    assert dense.embedded and dense._queries
    delete_user(store, "u1")
    assert not policy.part._indexes
    assert dense.closed and dense.embedded == 0 and dense._vecs is None
    assert not dense._queries and not dense.backlog  # nor the question's embedding


def test_the_real_model_makes_the_default_hybrid_once_warm() -> None:
    # The dev extra's all-MiniLM-L6-v2: the pet named by other words than the question's is
    # found by the default (auto) once warm, never by BM25 alone.
    results = {}
    for retriever in ("bm25", "auto"):
        model = EchoModel()
        policy = DefaultPolicy(600, retriever=retriever)
        chat = Chat(model, store=MemoryStore(), policy=policy, title_model=False)
        chat.send("I adopted a tabby kitten last month and named her Biscuit.")
        for i in range(24):
            chat.send(f"{FILLER[i % len(FILLER)]} ({i})")
        chat.send("What is my cat called?")
        if retriever == "auto":
            assert policy.wait_warm(600), embeddings.load_error()
            chat.send("What is my cat called?")
        results[retriever] = "Biscuit" in request_text(model)
    assert results == {"bm25": False, "auto": True}
