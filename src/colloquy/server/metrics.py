"""``/metrics``: the service's Prometheus series, with prometheus-client.

The figures come from colloquy's telemetry records (:mod:`colloquy.telemetry.events`): every
model call, whatever its purpose, and every turn. Series (see the README's "Operating
colloquy" for the labels):

    colloquy_turn_duration_seconds            histogram  model, outcome, streaming
    colloquy_turn_time_to_first_token_seconds histogram  model
    colloquy_turns_in_flight                  gauge      (summed over worker processes)
    colloquy_model_call_duration_seconds      histogram  provider, model, purpose
    colloquy_tokens_total                     counter    provider, model, purpose, kind, estimated
    colloquy_cost_usd_total                   counter    provider, model, purpose
    colloquy_unpriced_calls_total             counter    provider, model
    colloquy_errors_total                     counter    source (model_call, turn), type
    colloquy_rate_limit_refusals_total        counter
    colloquy_turn_steps_total                 counter    placement (loop, threads, behind)

Several worker processes: ``colloquy serve`` gives them one private directory
(``PROMETHEUS_MULTIPROC_DIR``, prometheus-client's multiprocess mode) before they start, so a
scrape answered by any worker, or by the separate metrics port, reports the whole service.
The gauge files of a worker that died are dropped at the next scrape (its counters stay: a
counter never goes back).
"""

from __future__ import annotations

import hmac
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

from ..telemetry import Listener, ModelCall, TurnEnded, TurnStarted, add_listener

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds: from a cached echo turn (ms) to a long tool-using turn on a slow model (minutes).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
TOKEN_KINDS = ("input", "output", "cache_write", "cache_read")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_VAR) or None


class Metrics(Listener):
    """The series, fed by the telemetry listener methods; one per process (:func:`metrics`)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.turn_duration = Histogram(
            "colloquy_turn_duration_seconds", "Turns, from the request to the reply or failure.",
            ["model", "outcome", "streaming"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram(
            "colloquy_turn_time_to_first_token_seconds",
            "Streamed turns: time until the first text delta reached the client.",
            ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "colloquy_turns_in_flight", "Turns running now, in every worker process.",
            registry=r, multiprocess_mode="livesum")
        self.call_duration = Histogram(
            "colloquy_model_call_duration_seconds",
            "Model calls (turn rounds, summaries, extraction, titles, guards), by purpose.",
            ["provider", "model", "purpose"], buckets=DURATION_BUCKETS, registry=r)
        self.tokens = Counter(
            "colloquy_tokens", "Tokens billed by kind (input is uncached input); estimated=true "
            "when the server reported no usage and colloquy counted.",
            ["provider", "model", "purpose", "kind", "estimated"], registry=r)
        self.cost = Counter(
            "colloquy_cost_usd", "Cost of model calls in US dollars (priced calls only).",
            ["provider", "model", "purpose"], registry=r)
        self.unpriced = Counter(
            "colloquy_unpriced_calls", "Model calls whose price is unknown (not in cost).",
            ["provider", "model"], registry=r)
        self.errors = Counter(
            "colloquy_errors", "Failed model calls and turns, by error type.",
            ["source", "type"], registry=r)
        self.refusals = Counter(
            "colloquy_rate_limit_refusals", "Requests refused by the per-user rate limit.",
            registry=r)
        self.steps = Counter(
            "colloquy_turn_steps", "Turns by where their steps began: on the event loop "
            "(loop), on the step threads as the store or serve --steps asks (threads), or on "
            "them because the loop ran behind (behind).", ["placement"], registry=r)

    # -- telemetry listener -----------------------------------------------------------------------

    def model_call(self, call: ModelCall) -> None:
        self.call_duration.labels(call.provider, call.model, call.purpose).observe(call.duration)
        if call.error_type is not None:
            self.errors.labels("model_call", call.error_type).inc()
            return
        if call.usage is not None:
            estimated = "true" if call.estimated else "false"
            for kind, n in zip(TOKEN_KINDS, (call.usage.input_tokens, call.usage.output_tokens,
                                            call.usage.cache_write_tokens,
                                            call.usage.cache_read_tokens)):
                if n:
                    self.tokens.labels(call.provider, call.model, call.purpose, kind,
                                       estimated).inc(n)
        if call.cost_usd is None:
            self.unpriced.labels(call.provider, call.model).inc()
        elif call.cost_usd:
            self.cost.labels(call.provider, call.model, call.purpose).inc(call.cost_usd)

    def turn_started(self, turn: TurnStarted) -> None:
        self.in_flight.inc()

    def turn_ended(self, turn: TurnEnded) -> None:
        self.in_flight.dec()
        self.turn_duration.labels(turn.model, turn.outcome if turn.outcome in (
            "ok", "blocked", "replayed") else "error", str(turn.streaming).lower()).observe(
                turn.duration)
        if turn.time_to_first_token is not None:
            self.ttft.labels(turn.model).observe(turn.time_to_first_token)
        if turn.outcome not in ("ok", "blocked", "replayed"):
            self.errors.labels("turn", turn.outcome).inc()

    def rate_limited(self) -> None:
        self.refusals.inc()


_metrics: Metrics | None = None
_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's series, created and subscribed to colloquy's telemetry on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
            add_listener(_metrics)
        return _metrics


def record_refusal() -> None:
    """A request was refused by the rate limit (counted when metrics are on in this process)."""
    if _metrics is not None:
        _metrics.rate_limited()


def record_steps(placement: str) -> None:
    """Where a turn's steps began (counted when metrics are on in this process):
    ``loop``, ``threads`` or ``behind`` (colloquy.server.service.ChatService, LoopLag)."""
    if _metrics is not None:
        _metrics.steps.labels(placement).inc()


_GAUGE_FILE = re.compile(r"^gauge_live(?:sum|all)_(\d+)\.db$")


def _drop_dead_workers(directory: str) -> None:
    for f in os.listdir(directory):
        m = _GAUGE_FILE.match(f)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:  # pragma: no cover - alive, another user's
            pass


class _Service:
    """The series of every worker process, read from the shared directory at each scrape."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        _drop_dead_workers(self.directory)
        yield from multiprocess.MultiProcessCollector(None, path=self.directory).collect()


def service_registry() -> CollectorRegistry:
    """What a scrape reports: the whole service in multiprocess mode, else this process."""
    directory = multiprocess_dir()
    if directory is None:
        return metrics().registry
    registry = CollectorRegistry()
    registry.register(_Service(directory))  # type: ignore[arg-type]
    return registry


def exposition() -> bytes:
    """The Prometheus text format of :func:`service_registry`."""
    return generate_latest(service_registry())


def token_ok(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    given = (header or "").partition(" ")
    return given[0].lower() == "bearer" and hmac.compare_digest(given[2].strip().encode(), token.encode())


def clean_directory(directory: Path) -> None:
    """Remove a previous run's files (prometheus-client's ``*.db``) before the workers start."""
    for f in directory.glob("*.db"):
        f.unlink()
