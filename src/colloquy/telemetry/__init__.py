"""Traces and metrics of colloquy's work: OpenTelemetry GenAI spans for every model call, a span
per turn grouping the context policy's, the store's and the tools' work, and in-process
records for metrics (``colloquy serve`` turns them into Prometheus series).

* :mod:`colloquy.telemetry.genai`: the model-call span, applied to every model class in one
  place (``Model.__init_subclass__``).
* :mod:`colloquy.telemetry.turns`: the turn span and its children (context, store, tools).
* :mod:`colloquy.telemetry.context`: what a call is for (:func:`call_purpose`).
* :mod:`colloquy.telemetry.events`: :class:`Listener` records for metrics.

The library uses only ``opentelemetry-api``: spans are no-ops until the application installs an
SDK (``colloquy serve`` does when the ``OTEL_*`` variables ask for export).
"""

from .context import (
    PURPOSES,
    call_purpose,
    conversation,
    current_conversation,
    current_purpose,
    isolated,
)
from .events import Listener, ModelCall, TurnEnded, TurnStarted, add_listener, remove_listener
from .genai import capture_content

__all__ = [
    "PURPOSES",
    "Listener",
    "ModelCall",
    "TurnEnded",
    "TurnStarted",
    "add_listener",
    "call_purpose",
    "capture_content",
    "conversation",
    "current_conversation",
    "current_purpose",
    "isolated",
    "remove_listener",
]
