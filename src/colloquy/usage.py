"""Token usage and what it costs.

Every stored reply carries a :class:`Usage`; a :class:`Price` per model turns it into dollars.
Prices come from the `genai-prices` package's bundled data (never fetched at run time), with
:func:`set_price` to override; local and offline models are free.
Cache writes and cache reads are priced on their own because with prompt caching they are most
of the bill: Anthropic bills a 5-minute cache write at 1.25x and a cache read at 0.1x of the
input price, so the same replayed prefix can cost 10x less when it stays byte-identical.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict


class Usage(BaseModel):
    """Tokens billed for one model call (or a sum of calls).

    ``input_tokens`` counts only the uncached input, as the Anthropic API reports it; the
    total prompt size is ``input_tokens + cache_write_tokens + cache_read_tokens``.
    ``estimated`` is True when a provider reported no usage (llama.cpp's server streams none)
    and the counts are colloquy's own estimate of the request and the reply: never a false
    zero. A sum is estimated when any part of it is.
    """

    model_config = ConfigDict(frozen=True)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    estimated: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def reported(self) -> bool:
        """False for a call whose provider reported no usage and nothing was estimated (every
        count 0): no model call reads zero tokens, so its cost is unknown, never $0."""
        return self.estimated or bool(self.prompt_tokens or self.output_tokens)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            estimated=self.estimated or other.estimated,
        )

    def describe(self) -> str:
        """``in 120 · out 15``, ``in ~120 · out ~15 (estimated)``, or ``usage not reported``
        (for display)."""
        if not self.reported:
            return "usage not reported"
        mark = "~" if self.estimated else ""
        text = f"in {mark}{self.input_tokens} · out {mark}{self.output_tokens}"
        return f"{text} (estimated)" if self.estimated else text

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


#: The price of models that run locally or in-process.
FREE = Price(input=0, output=0, cache_write=0, cache_read=0)


#: Prices registered with :func:`set_price` (USD per million tokens), by model-id prefix:
#: they override the packaged price data. Offline doubles are listed here as free so that a
#: stored row naming only its model (``echo``) is priced too.
PRICES: dict[str, Price] = {
    "echo": FREE,
    "scripted": FREE,
    "function": FREE,
    "offline-": FREE,  # the offline summariser and fact extractor
}

#: Providers whose models run on the user's own machine or in-process: never billed. A model id
#: ``ollama:llama3`` or a price key ``offline:my-double`` (see ``Model.price_key``) is free.
FREE_PROVIDERS = frozenset({"offline", "ollama", "vllm", "llamacpp", "local"})

#: colloquy's provider names as genai-prices' provider ids (others are matched by model id).
_PROVIDER_IDS = {"anthropic": "anthropic", "openai": "openai"}


def set_price(model_prefix: str, price: Price) -> None:
    """Register or replace the price of a model (or of every model id with that prefix); it
    takes precedence over the packaged price data."""
    PRICES[model_prefix] = price


def _split(model: str) -> tuple[str, str]:
    provider, sep, name = model.partition(":")
    return (provider, name) if sep else ("", model)


def _override(model: str, name: str) -> Price | None:
    """The registered price of the longest prefix of ``model``, else of its bare ``name``."""
    for key in (model, name) if name != model else (model,):
        best = ""
        for prefix in PRICES:
            if len(prefix) > len(best) and key.startswith(prefix):
                best = prefix
        if best:
            return PRICES[best]
    return None


@functools.lru_cache(maxsize=1024)
def _snapshot_model(provider: str, name: str) -> Any:
    """genai-prices' ``(provider, model info)`` for a model id, or None when it has no price.

    The package's bundled snapshot only: ``genai_prices.UpdatePrices`` (which downloads newer
    data) is never started, so a lookup makes no network access (tests/test_usage.py checks).
    Imported on first use: the snapshot takes about a second to load."""
    from genai_prices import data_snapshot

    try:
        return data_snapshot.get_snapshot().find_provider_model(
            name, None, _PROVIDER_IDS.get(provider), None)
    except LookupError:
        return None


def _snapshot_price(info: Any) -> Price:
    """The base prices (the lowest tier) in force now, with genai-prices' rule that a kind of
    token with no price of its own is billed as input."""
    model = info[1].get_prices(datetime.now(timezone.utc))

    def per_mtok(value: Any) -> float | None:
        if value is None:
            return None
        return float(getattr(value, "base", value))

    input_ = per_mtok(model.input_mtok) or 0.0
    write = per_mtok(model.cache_write_mtok)
    read = per_mtok(model.cache_read_mtok)
    return Price(input=input_, output=per_mtok(model.output_mtok) or 0.0,
                 cache_write=input_ if write is None else write,
                 cache_read=input_ if read is None else read)


def price_for(model: str | None) -> Price | None:
    """The price of a model id (``claude-sonnet-4-6``, ``openai:gpt-4o``, ``ollama:llama3``);
    ``None`` when unknown.

    In order: a price registered with :func:`set_price` (longest prefix); free for local and
    offline providers (:data:`FREE_PROVIDERS`); else the packaged `genai-prices` snapshot
    (maintained by Pydantic from the providers' price pages; base tier shown).
    """
    if not model:
        return None
    provider, name = _split(model)
    override = _override(model, name)
    if override is not None:
        return override
    if provider in FREE_PROVIDERS:
        return FREE
    info = _snapshot_model(provider, name)
    return _snapshot_price(info) if info is not None else None


def add_costs(costs: Iterable[float | None]) -> float | None:
    """The dollars of several model calls (a turn's rounds, a session's turns and side calls):
    ``None`` (unknown) when any call's cost is unknown, never a sum that counts it as $0.
    Whether the total is an estimate travels with the usage (``Usage.total``: estimated when
    any part is)."""
    total = 0.0
    for c in costs:
        if c is None:
            return None
        total += c
    return total


def priced(model: str | None, usage: Usage | None, stored: float | None) -> float | None:
    """One stored model call's dollars: ``stored`` (its price when it was made), else
    :func:`cost_of`; None when unknown, which a call that reported no usage always is (rows
    stored before that rule carry $0 for it)."""
    if usage is None or not usage.reported:
        return None
    return stored if stored is not None else cost_of(model, usage)


def cost_of(model: str | None, usage: Usage | None) -> float | None:
    """Dollars for one model call's usage, or ``None`` if the model's price is unknown or the
    call reported no usage (:attr:`Usage.reported`: a cost that is unknown is never $0).

    Priced like :func:`price_for`; with the packaged data the cost is genai-prices' own
    calculation, so tiered prices (e.g. Claude's long-context rate above 200k input tokens)
    apply per call: price each call, then add the dollars.
    """
    if usage is None or not model or not usage.reported:
        return None
    provider, name = _split(model)
    override = _override(model, name)
    if override is not None:
        return override.cost(usage)
    if provider in FREE_PROVIDERS:
        return 0.0
    info = _snapshot_model(provider, name)
    if info is None:
        return None
    from genai_prices import Usage as PricedUsage

    priced = info[1].calc_price(PricedUsage(
        # genai-prices counts cached tokens inside input_tokens, as OpenAI reports them
        input_tokens=usage.prompt_tokens, output_tokens=usage.output_tokens,
        cache_write_tokens=usage.cache_write_tokens, cache_read_tokens=usage.cache_read_tokens,
    ), info[0])
    return float(priced.total_price)
