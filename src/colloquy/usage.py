"""Token usage and what it costs.

Every stored reply carries a :class:`Usage`; a :class:`Price` per model turns it into dollars.
Cache writes and cache reads are priced on their own because with prompt caching they are most
of the bill: Anthropic bills a 5-minute cache write at 1.25x and a cache read at 0.1x of the
input price, so the same replayed prefix can cost 10x less when it stays byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class Usage(BaseModel):
    """Tokens billed for one model call (or a sum of calls).

    ``input_tokens`` counts only the uncached input, as the Anthropic API reports it; the
    total prompt size is ``input_tokens + cache_write_tokens + cache_read_tokens``.
    """

    model_config = ConfigDict(frozen=True)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
        )

    @classmethod
    def total(cls, usages: Iterable[Usage | None]) -> Usage:
        out = cls()
        for u in usages:
            if u is not None:
                out = out + u
        return out


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(frozen=True)
    input: float
    output: float
    cache_write: float
    cache_read: float

    @classmethod
    def anthropic(cls, input: float, output: float) -> Price:
        """Anthropic's rule: 5-minute cache writes at 1.25x input, reads at 0.1x."""
        return cls(input=input, output=output, cache_write=input * 1.25, cache_read=input * 0.1)

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_write_tokens * self.cache_write
            + usage.cache_read_tokens * self.cache_read
        ) / 1_000_000


#: List prices (USD per million tokens) as published by the providers at the time of writing.
#: Keys are model-id prefixes: ``claude-sonnet-4-5-20250929`` is priced as ``claude-sonnet-4-5``.
#: Override or extend with :func:`set_price`.
PRICES: dict[str, Price] = {
    "claude-opus-4-6": Price.anthropic(5.0, 25.0),
    "claude-opus-4-5": Price.anthropic(5.0, 25.0),
    "claude-opus-4-1": Price.anthropic(15.0, 75.0),
    "claude-opus-4": Price.anthropic(15.0, 75.0),
    "claude-sonnet-4-6": Price.anthropic(3.0, 15.0),
    "claude-sonnet-4-5": Price.anthropic(3.0, 15.0),
    "claude-sonnet-4": Price.anthropic(3.0, 15.0),
    "claude-3-7-sonnet": Price.anthropic(3.0, 15.0),
    "claude-haiku-4-5": Price.anthropic(1.0, 5.0),
    "claude-3-5-haiku": Price.anthropic(0.8, 4.0),
    "gpt-5-mini": Price(input=0.25, output=2.0, cache_write=0.25, cache_read=0.025),
    "gpt-5": Price(input=1.25, output=10.0, cache_write=1.25, cache_read=0.125),
    "gpt-4.1-mini": Price(input=0.4, output=1.6, cache_write=0.4, cache_read=0.1),
    "gpt-4.1": Price(input=2.0, output=8.0, cache_write=2.0, cache_read=0.5),
    "gpt-4o-mini": Price(input=0.15, output=0.6, cache_write=0.15, cache_read=0.075),
    "gpt-4o": Price(input=2.5, output=10.0, cache_write=2.5, cache_read=1.25),
    # Offline and local models cost nothing.
    "echo": Price(input=0, output=0, cache_write=0, cache_read=0),
    "scripted": Price(input=0, output=0, cache_write=0, cache_read=0),
    "function": Price(input=0, output=0, cache_write=0, cache_read=0),
    "offline-": Price(input=0, output=0, cache_write=0, cache_read=0),  # summariser, facts
}


def set_price(model_prefix: str, price: Price) -> None:
    """Register or replace the price of a model (or of every model id with that prefix)."""
    PRICES[model_prefix] = price


def price_for(model: str | None) -> Price | None:
    """The price of a model id, by longest matching prefix; ``None`` when unknown.

    A provider prefix such as ``openai:`` or ``ollama:`` is ignored; local servers (ollama,
    vllm, llamacpp) are free.
    """
    if not model:
        return None
    provider, sep, name = model.partition(":")
    if not sep:
        provider, name = "", model
    if provider in {"ollama", "vllm", "llamacpp", "local"}:
        return PRICES["echo"]
    best = max((k for k in PRICES if name.startswith(k)), key=len, default=None)
    return PRICES[best] if best else None


def cost_of(model: str | None, usage: Usage | None) -> float | None:
    """Dollars for one usage record, or ``None`` if the model's price is unknown."""
    if usage is None:
        return None
    price = price_for(model)
    return price.cost(usage) if price else None
