"""One place loads the sentence-embedding model, with torch's thread count set on purpose (1 by
default: many turns at once share the cores better than one encode call spinning all of them)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from colloquy import embeddings
from colloquy.errors import ConfigError

SCRIPT = """
import torch
from colloquy import embeddings
from colloquy.context.recall import DenseRetriever
from colloquy.guards import SentenceEmbedder
vecs = embeddings.embed(["a cat on a mat", "a kitten on a rug"])
print("threads", torch.get_num_threads(), "shape", vecs.shape, "norm", round(float((vecs[0] ** 2).sum()), 3))
# recall and the topic guard use the very model loaded above
guard = SentenceEmbedder()
print("shared", DenseRetriever()._embed(["x"]).shape[1] == 384 and guard.ready(60)
      and guard._model is embeddings.sentence_model())
embeddings.set_torch_threads(2)
print("after", torch.get_num_threads())
"""


def run() -> str:
    env = {k: v for k, v in os.environ.items() if k != embeddings.THREADS_ENV}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_model_loads_with_one_torch_thread_unless_configured() -> None:
    out = run()
    assert "threads 1 shape (2, 384) norm 1.0" in out  # torch's default would be the core count
    assert "shared True" in out
    assert "after 2" in out  # set_torch_threads applies at once to a loaded torch


def test_the_thread_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "_threads", None)
    monkeypatch.setenv(embeddings.THREADS_ENV, "many")
    with pytest.raises(ConfigError, match="COLLOQUY_TORCH_THREADS"):
        embeddings.torch_threads()
    monkeypatch.setenv(embeddings.THREADS_ENV, "0")
    assert embeddings.torch_threads() == 0  # torch's own default
    monkeypatch.delenv(embeddings.THREADS_ENV)
    assert embeddings.torch_threads() == embeddings.DEFAULT_TORCH_THREADS == 1
    with pytest.raises(ConfigError):
        embeddings.set_torch_threads(-1)
    assert embeddings.embeddings_available()  # the dev extra installs it
