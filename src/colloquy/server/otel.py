"""OpenTelemetry for ``colloquy serve``: the SDK, OTLP export, and FastAPI's request spans.

The library only calls the OpenTelemetry API (:mod:`colloquy.telemetry`); the service installs
the SDK when the standard variables ask for export, and leaves it out otherwise:

* ``OTEL_SDK_DISABLED=true``: nothing.
* ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none`` (comma-separated); when unset,
  ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
  else no export at all.
* The exporter reads the rest itself (endpoint, headers, timeout, compression; OTLP over
  HTTP/protobuf, the SDK's default); batching follows ``OTEL_BSP_*`` and sampling
  ``OTEL_TRACES_SAMPLER``; the resource ``OTEL_SERVICE_NAME`` (default ``colloquy``) and
  ``OTEL_RESOURCE_ATTRIBUTES``.

Each worker process installs its own provider (uvicorn starts workers as fresh processes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

log = logging.getLogger("colloquy.server")


def exporters_wanted(environ: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the OTEL_* variables ask for (empty: no tracing SDK)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        names = ["otlp"] if endpoint else []
    else:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = set(names) - {"otlp", "console", "none"}
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {sorted(unknown)}; "
                          "colloquy serve supports otlp, console and none")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if "otlp" in names and protocol != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: colloquy serve exports "
                          "OTLP over http/protobuf (point it at a collector's 4318 port)")
    return [n for n in names if n != "none"]


def setup_tracing(app: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Install the SDK with the wanted exporters as the global tracer provider and trace the
    app's requests; returns the provider, or None when no export is asked for."""
    names = exporters_wanted(environ)
    if not names:
        return None
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    env = os.environ if environ is None else environ
    attributes: dict[str, Any] = {}
    if "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = env.get("OTEL_SERVICE_NAME") or "colloquy"
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls="healthz,metrics,static")

    @app.on_event("shutdown")
    def _flush() -> None:  # the last batch is exported before the worker exits
        provider.shutdown()

    log.info("colloquy: exporting traces (%s)", ", ".join(names))
    return provider
