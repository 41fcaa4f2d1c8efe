"""A per-user rate limit, one for all processes and machines: the state lives in the database
the service already uses (see ``take_rate`` in ``store/sqlbase.py``; the memory store keeps it
in process memory).

Why GCRA (the generic cell rate algorithm, a token bucket written as one timestamp): a user's
whole state is one number, the theoretical arrival time (TAT) of their next request, so a
request is one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` that decides, records and
returns the wait for Retry-After atomically, whichever process or machine serves it. It allows
bursts of ``burst`` requests (a page load fires several) while holding the long-run rate to
``requests`` per ``per`` seconds, as the token bucket it replaces did.

Why not the ``limits`` package: its storages are Redis, Memcached, MongoDB, etcd and process
memory, none of them our database, so it would need a storage of ours anyway; its storage API
passes opaque key strings (the user's name inside a string no data-rights query can find, where
our rows carry a ``user_id`` column that ``users delete`` removes), and of its strategies the
one that maps to a single statement (fixed window) lets twice the limit through across a window
boundary, while the sliding-window counter needs two counters updated together. The GCRA here is
one statement per dialect (``queries.take_rate_sql``).

:meth:`RateLimiter.check` is the one place a request is refused (count refusals there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import ConfigError
from .errors import TooManyRequests
from .metrics import record_refusal


@dataclass(frozen=True)
class RateLimit:
    """``requests`` per ``per`` seconds, with bursts up to ``burst`` (default: ``requests``)."""

    requests: int
    per: float = 60.0
    burst: int | None = None

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """``"60/minute"``, ``"10/s"``, ``"100/30s"`` or ``"off"``."""
        text = text.strip().lower()
        if text in {"off", "none", "0"}:
            return None
        m = re.fullmatch(r"(\d+)\s*/\s*(\d*\.?\d*)\s*(s|sec|second|m|min|minute|h|hour)?", text)
        if not m or int(m.group(1)) < 1:
            raise ConfigError(f"invalid rate limit {text!r}: use N/minute, N/second, N/30s or off")
        unit = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
                "hour": 3600}[m.group(3) or "s"]
        per = float(m.group(2) or 1) * unit
        if per <= 0:
            raise ConfigError(f"invalid rate limit {text!r}: the period must be positive")
        return cls(requests=int(m.group(1)), per=per)

    @property
    def capacity(self) -> int:
        return self.burst or self.requests

    @property
    def interval(self) -> float:
        """Seconds per request at the long-run rate (GCRA's emission interval)."""
        return self.per / self.requests


@runtime_checkable
class RateStore(Protocol):
    """What a store offers the limiter (every shipped store has it)."""

    def take_rate(self, user_id: str, interval: float, burst: int) -> float: ...


class RateLimiter:
    """The service's limit over a store's ``take_rate``."""

    def __init__(self, limit: RateLimit, store: RateStore) -> None:
        self.limit = limit
        self.store = store

    def take(self, user_id: str) -> float:
        """0.0 when the request is allowed, else the seconds until one would be."""
        return self.store.take_rate(user_id, self.limit.interval, self.limit.capacity)

    def check(self, user_id: str) -> None:
        """Count one request of ``user_id``; :class:`TooManyRequests` (429 with Retry-After)
        when over the limit."""
        wait = self.take(user_id)
        if wait > 0:
            record_refusal()  # the one place a request is refused: /metrics counts it here
            raise TooManyRequests(
                f"rate limit of {self.limit.requests} requests per {self.limit.per:g}s "
                f"reached; retry in {wait:.1f}s", retry_after=wait)
