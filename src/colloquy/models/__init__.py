"""Model adapters behind one interface, and :func:`get_model` to pick one by name.

Model names:
    ``echo``                               offline, deterministic (debugging, demos)
    ``claude-...`` or ``anthropic:NAME``   Anthropic Messages API (``ANTHROPIC_API_KEY``)
    ``gpt-...``, ``o1...`` or ``openai:NAME``  OpenAI (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``)
    ``ollama:NAME``, ``vllm:NAME``, ``llamacpp:NAME``  OpenAI-compatible local servers
Local servers are configuration of the one OpenAI-compatible adapter, not code of their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import (
    Model,
    ModelRequest,
    ModelResponse,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolChoice,
    ToolSpec,
)
from .offline import EchoModel, FunctionModel, ScriptedModel, tool_call

DEFAULT_MODEL = "claude-sonnet-4-6"

#: Default base URLs of OpenAI-compatible local servers, and the variable that overrides each.
LOCAL_SERVERS: dict[str, tuple[str, str]] = {
    "ollama": ("OLLAMA_BASE_URL", "http://localhost:11434/v1"),
    "vllm": ("VLLM_BASE_URL", "http://localhost:8000/v1"),
    "llamacpp": ("LLAMACPP_BASE_URL", "http://localhost:8080/v1"),
}

_OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-")


def get_model(
    name: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Model:
    """Build a model from its name (see the module docstring). ``environ`` is injectable for
    tests; API keys are read from it only when not given."""
    env = os.environ if environ is None else environ
    if name is not None and not name.strip():
        raise ConfigError("the model name is empty")  # never a silent fall back to the default
    name = name or env.get("COLLOQUY_MODEL") or DEFAULT_MODEL
    provider, sep, model_id = name.partition(":")
    if not sep:
        provider, model_id = "", name
    if not model_id:
        raise ConfigError(f"model name {name!r} has no model id after {provider + ':'!r}")
    if provider == "" and model_id == "echo":
        return EchoModel(**kwargs)
    if provider == "" and model_id.startswith("echo?"):
        return EchoModel.from_spec(model_id)
    if provider == "anthropic" or (provider == "" and model_id.startswith("claude")):
        from .anthropic import AnthropicModel

        return AnthropicModel(model_id, api_key=api_key, base_url=base_url, environ=env, **kwargs)
    if provider == "openai" or (provider == "" and model_id.startswith(_OPENAI_PREFIXES)):
        from .openai import OpenAIModel

        return OpenAIModel(model_id, api_key=api_key, base_url=base_url, environ=env, **kwargs)
    if provider in LOCAL_SERVERS:
        from .openai import OpenAIModel

        var, default = LOCAL_SERVERS[provider]
        return OpenAIModel(
            model_id,
            # Never send a real OpenAI key to a server that is configured by URL.
            api_key=api_key or env.get(f"{provider.upper()}_API_KEY") or provider,
            base_url=base_url or env.get(var, default),
            environ=env,
            provider=provider,
            **kwargs,
        )
    raise ConfigError(
        f"unknown model {name!r}: use echo, claude-..., gpt-..., openai:NAME, "
        f"ollama:NAME, vllm:NAME or llamacpp:NAME"
    )


def model_spec(model: Model) -> str:
    """The name :func:`get_model` rebuilds ``model`` from, provider prefix included where the
    bare id would not find the provider (``ollama:llama3``, ``openai:mymodel``; ``gpt-4o`` and
    ``claude-sonnet-4-6`` as they are): what a conversation stores, so it resumes with the same
    provider."""
    provider, name = model.provider, model.name
    if provider == "anthropic":
        return name if name.startswith("claude") else f"anthropic:{name}"
    if provider == "openai":
        return name if name.startswith(_OPENAI_PREFIXES) else f"openai:{name}"
    if provider in LOCAL_SERVERS:
        return f"{provider}:{name}"
    return name


__all__ = [
    "DEFAULT_MODEL",
    "EchoModel",
    "FunctionModel",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ScriptedModel",
    "StreamEvent",
    "TextDelta",
    "ThinkingDelta",
    "ToolChoice",
    "ToolSpec",
    "get_model",
    "model_spec",
    "tool_call",
]
