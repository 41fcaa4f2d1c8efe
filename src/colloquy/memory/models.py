"""Which model writes summaries and extracts facts.

Default: ``claude-haiku-4-5`` (cheap, good at both). Any colloquy model name or :class:`Model`
works. Two OFFLINE models ship for benches, tests and offline demos (no network, deterministic):
``offline-summariser`` and ``offline-facts`` (see memory/offline.py).
"""

from __future__ import annotations

from ..models import Model, get_model

DEFAULT_MEMORY_MODEL = "claude-haiku-4-5"
OFFLINE_SUMMARISER = "offline-summariser"
OFFLINE_FACTS = "offline-facts"


def resolve_model(spec: Model | str) -> Model:
    """A :class:`Model` from an instance or a name (the offline memory models included)."""
    if isinstance(spec, Model):
        return spec
    from .offline import ExtractiveSummariser, RuleFactExtractor

    if spec == OFFLINE_SUMMARISER:
        return ExtractiveSummariser()
    if spec == OFFLINE_FACTS:
        return RuleFactExtractor()
    return get_model(spec)


class MemoryModelUser:
    """Holds a memory model given by name or object and builds it on first use, so a missing
    API key shows as a warning note of the first summary or extraction (which never fail a
    turn), not as an error when the policy is created."""

    def __init__(self, model: Model | str = DEFAULT_MEMORY_MODEL) -> None:
        self._model_spec = model
        self._model: Model | None = model if isinstance(model, Model) else None

    @property
    def model(self) -> Model:
        if self._model is None:
            self._model = resolve_model(self._model_spec)
        return self._model

    @property
    def model_name(self) -> str:
        return self._model.name if self._model is not None else str(self._model_spec)


def is_offline(chat_model: Model | str | None) -> bool:
    if isinstance(chat_model, Model):
        return chat_model.provider == "offline"
    return chat_model is not None and (chat_model == "echo" or chat_model.startswith("offline"))


def default_memory_models(chat_model: Model | str | None) -> tuple[str, str]:
    """(summariser, extractor) names for a chat: the offline pair when the chat model itself is
    offline (``echo``, test doubles), so an offline chat never needs an API key; else Haiku."""
    if is_offline(chat_model):
        return OFFLINE_SUMMARISER, OFFLINE_FACTS
    return DEFAULT_MEMORY_MODEL, DEFAULT_MEMORY_MODEL
