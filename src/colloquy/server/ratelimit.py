"""A per-user rate limit: a token bucket per caller, in process memory.

Why a token bucket: it allows short bursts (a page load fires several requests) while holding
the long-run rate to ``requests`` per ``per`` seconds, and it says exactly when the next request
will be allowed, which becomes the Retry-After header. Each server process keeps its own
buckets, so N workers allow up to N times the rate; put the limit at the proxy if that matters.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError


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
        return cls(requests=int(m.group(1)), per=per)

    @property
    def capacity(self) -> int:
        return self.burst or self.requests


class RateLimiter:
    """Buckets keyed by user id. :meth:`take` returns 0 when allowed, else seconds to wait."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        rate = self.limit.requests / self.limit.per
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.limit.capacity), now))
            tokens = min(float(self.limit.capacity), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate
