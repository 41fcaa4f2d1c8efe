"""What the instrumentation of a model call costs: a model that answers at once, its ``request``
called bare (the adapter's own function) and through the instrumented entry point, without an
SDK (the library's default: no-op spans) and with the OpenTelemetry SDK recording every span.

    python bench/telemetry.py [--calls 20000]

Prints microseconds per call for each, and the overhead over the bare call, with the machine's
load. No targets: a model call over the network takes hundreds of milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from colloquy.messages import Message, TextBlock  # noqa: E402
from colloquy.models import Model, ModelRequest, ModelResponse  # noqa: E402

RESPONSE = ModelResponse(content=[TextBlock(text="ok")], model="bench")


class Fixed(Model):
    """Answers at once with the same response: what is timed is the instrumentation."""

    name = "bench"
    provider = "offline"

    def request(self, request: ModelRequest) -> ModelResponse:
        return RESPONSE


def per_call(fn, request: ModelRequest, calls: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn(request)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20_000)
    args = p.parse_args()
    model = Fixed()
    bare = type(model).request.__wrapped__  # type: ignore[attr-defined]
    request = ModelRequest(model="bench", messages=[Message.user("hello there")], max_tokens=16)
    t_bare = per_call(lambda r: bare(model, r), request, args.calls)
    t_noop = per_call(model.request, request, args.calls)

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)
    t_sdk = per_call(model.request, request, args.calls)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"{args.calls} calls, best of 5")
    print(f"  bare adapter call          {t_bare:8.1f} us/call")
    print(f"  instrumented, no SDK       {t_noop:8.1f} us/call  (+{t_noop - t_bare:.1f} us)")
    print(f"  instrumented, SDK spans    {t_sdk:8.1f} us/call  (+{t_sdk - t_bare:.1f} us)")


if __name__ == "__main__":
    main()
