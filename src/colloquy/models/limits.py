"""How much a model can read: its context window, in tokens.

Why a table of our own: a context policy must never build a request over the model's window
(the provider refuses it, and the turn is lost). Providers publish these figures on their model
pages; the SDKs do not expose them. Keys are model-id prefixes, looked up by the longest match,
as prices are (``claude-sonnet-4-5-20250929`` has the window of ``claude-sonnet-4-5``).

Sources: Anthropic's "Models overview" page (200,000 tokens for every current Claude model,
without the 1M beta header); OpenAI's model pages (gpt-4o and gpt-4o-mini 128,000; gpt-4.1
family 1,047,576; gpt-5 family 400,000; o1/o3/o4-mini 200,000). Local servers (ollama, vLLM,
llama.cpp) serve whatever context they were started with: 8,192 tokens is assumed unless
:func:`set_context_window` says otherwise (llama.cpp's server and ollama default to less or
equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Model

#: Context window in tokens, by model-id prefix. Extend or override with set_context_window.
CONTEXT_WINDOWS: dict[str, int] = {
    "claude-": 200_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4": 200_000,
    # Offline models: large enough never to bind in tests and demos.
    "echo": 1_000_000,
    "scripted": 1_000_000,
    "function": 1_000_000,
    "offline-": 1_000_000,
}

#: What a model not in the table is assumed to read (a local server's usual setting).
DEFAULT_CONTEXT_WINDOW = 8_192

#: Providers whose window is set by how the server was started, not by the model id.
LOCAL_PROVIDERS = frozenset({"ollama", "vllm", "llamacpp", "local"})


def set_context_window(model_prefix: str, tokens: int) -> None:
    """Register or replace the context window (tokens) of a model, or of every model id with
    that prefix (``set_context_window("ollama:llama3", 8192)``). Raises ValueError when
    ``tokens`` is not positive."""
    if tokens <= 0:
        raise ValueError(f"a context window is a positive number of tokens, not {tokens}")
    CONTEXT_WINDOWS[model_prefix] = int(tokens)


def context_window(model: str | None) -> int:
    """The context window of a model id, in tokens (longest matching prefix).

    An exact entry for the full name (``ollama:llama3``) wins; otherwise a provider prefix
    (``openai:``) is ignored, and local providers get :data:`DEFAULT_CONTEXT_WINDOW`.
    """
    if not model:
        return DEFAULT_CONTEXT_WINDOW
    if model in CONTEXT_WINDOWS:
        return CONTEXT_WINDOWS[model]
    provider, sep, name = model.partition(":")
    if not sep:
        provider, name = "", model
    if provider in LOCAL_PROVIDERS:
        best = max((k for k in CONTEXT_WINDOWS if model.startswith(k)), key=len, default=None)
        return CONTEXT_WINDOWS[best] if best else DEFAULT_CONTEXT_WINDOW
    best = max((k for k in CONTEXT_WINDOWS if name.startswith(k)), key=len, default=None)
    return CONTEXT_WINDOWS[best] if best else DEFAULT_CONTEXT_WINDOW


def window_of(model: Model) -> int:
    """The context window of a model adapter: a local server's model by ``provider:name``
    (``llamacpp:smollm2``), any other by its name."""
    provider = getattr(model, "provider", "")
    return context_window(f"{provider}:{model.name}" if provider in LOCAL_PROVIDERS else model.name)
