"""In-process records of model calls and turns, for metrics.

The same instrumentation that makes the spans hands a :class:`ModelCall` to every registered
:class:`Listener` after each model call, and :class:`TurnStarted` / :class:`TurnEnded` around
each turn. Why listeners and not only spans: metrics must count every call, while spans may be
sampled away, and the library must not depend on a metrics library. ``colloquy serve``
registers a Prometheus listener (``colloquy.server.metrics``); an application can register its
own. Listeners run synchronously in the calling thread: keep them cheap. One that raises is
logged and skipped, never failing the call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ..usage import Usage

log = logging.getLogger("colloquy.telemetry")


@dataclass(frozen=True)
class ModelCall:
    """One finished model call (a request, or a whole stream)."""

    #: colloquy's provider name (``anthropic``, ``openai``, ``ollama``, ``offline``, ...).
    provider: str
    #: The model id requested (``gen_ai.request.model``).
    model: str
    #: turn, summary, extraction, title, guard, eval or other (see ``call_purpose``).
    purpose: str
    conversation_id: str | None
    #: Wall time of the call, in seconds (a stream: until its final message).
    duration: float
    streaming: bool
    #: Seconds until the first text delta of a stream; None when not streamed or no text.
    time_to_first_chunk: float | None = None
    #: None when the call failed.
    usage: Usage | None = None
    #: USD; None when the price is unknown or the call failed.
    cost_usd: float | None = None
    #: The ``error.type`` of a failed call (the exception's class name); None on success.
    error_type: str | None = None
    #: True when the provider reported no usage and the counts are colloquy's estimates.
    estimated: bool = False


@dataclass(frozen=True)
class TurnStarted:
    conversation_id: str
    model: str
    streaming: bool


@dataclass(frozen=True)
class TurnEnded:
    conversation_id: str
    model: str
    streaming: bool
    #: Seconds from the start of the turn (lock wait included) to its reply or failure.
    duration: float
    #: Seconds to the first text delta the caller received (streamed turns with text only).
    time_to_first_token: float | None
    #: ``ok``, ``blocked`` (an input guard answered), ``replayed`` (an idempotent retry), or
    #: the class name of the error that ended the turn.
    outcome: str


class Listener:
    """Receives telemetry records; override the methods you need."""

    def model_call(self, call: ModelCall) -> None:
        pass

    def turn_started(self, turn: TurnStarted) -> None:
        pass

    def turn_ended(self, turn: TurnEnded) -> None:
        pass


_listeners: tuple[Listener, ...] = ()
_guard = threading.Lock()


def add_listener(listener: Listener) -> None:
    """Register ``listener`` for every later call and turn in this process."""
    global _listeners
    with _guard:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)


def remove_listener(listener: Listener) -> None:
    global _listeners
    with _guard:
        _listeners = tuple(x for x in _listeners if x is not listener)


def listening() -> bool:
    """True when any listener is registered (callers skip building records otherwise)."""
    return bool(_listeners)


def emit(method: str, record: object) -> None:
    for listener in _listeners:
        try:
            getattr(listener, method)(record)
        except Exception as e:  # noqa: BLE001 - telemetry never fails the call it observes
            log.warning("telemetry listener %r failed on %s: %s", listener, method, e)
