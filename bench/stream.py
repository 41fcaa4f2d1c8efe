"""Streaming at the cost of the wire: ``colloquy serve`` beside a bare FastAPI/uvicorn SSE
endpoint relaying the same events, in one run.

    python bench/stream.py [--streams 300] [--first 3] [--rate 30] [--seconds 5]

A model that sends its first delta after ``--first`` seconds, then ``--rate`` deltas a second
for ``--seconds`` (the echo model: ``echo?latency=3&delay=0.0333&words=150``), streamed to
``--streams`` concurrent clients (``colloquy loadtest``'s generator, SSE parsed by httpx-sse).
The same generator then drives bench/baseline_app.py, which relays the same events with no
store, policy or auth. Printed: first-token percentiles, the SSE delta events the clients
received, the model's deltas relayed per second of server CPU (one core fully busy = "per
core"; every completed stream relayed all ``rate x seconds`` of them, whether one event each or
coalesced: colloquy joins deltas that wait for the same write, colloquy.server.coalesce), both
servers side by side, and the ratio. Targets (issue 16): first-token p99 <= first + 1.5 s (4.5 s
at the defaults); colloquy's deltas per CPU-second >= 0.5 x the bare endpoint's. Exit status 0
when both hold.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import cpu_seconds, drive, load, serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=300)
    ap.add_argument("--first", type=float, default=3.0, help="seconds to the first delta")
    ap.add_argument("--rate", type=float, default=30.0, help="deltas per second after it")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long the deltas flow")
    args = ap.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    words = int(args.rate * args.seconds)
    delay = 1 / args.rate
    model = f"echo?latency={args.first:g}&delay={delay:.4f}&words={words}"
    baseline = [sys.executable, str(Path(__file__).with_name("baseline_app.py")),
                "--latency", f"{args.first:g}", "--delay", f"{delay:.4f}", "--words", str(words)]
    print(f"{args.streams} streams: first delta after {args.first:g} s, then {args.rate:g}/s for "
          f"{args.seconds:g} s; {os.cpu_count()} cores; load {load()} at start")
    rows = []
    for name, argv_ in (("colloquy serve", None), ("bare FastAPI SSE", baseline)):
        with serve(model, argv=argv_) as server:
            drive(server, 5, 1, stream=True)  # warm up
            before = load()
            cpu0 = cpu_seconds(server.pid)
            result, _ = drive(server, args.streams, 1, stream=True, timeout=120)
            cpu = cpu_seconds(server.pid) - cpu0
        ttft = result.ttft
        assert ttft is not None
        rows.append((name, result, cpu, before, load()))
    head = (f"{'server':<18} {'done':>9} {'ttft p50':>9} {'ttft p99':>9} {'events':>8} "
            f"{'deltas':>8} {'srv CPU s':>9} {'deltas/CPU-s':>12} {'gen ms/req':>10} "
            f"{'load before→after':>22}")
    print(head)
    print("-" * len(head))
    rates = []
    for name, r, cpu, before, after in rows:
        deltas = r.completed * words  # a completed stream relayed every delta of the reply
        rate = deltas / cpu if cpu else float("inf")
        rates.append(rate)
        ttft = r.ttft
        assert ttft is not None
        print(f"{name:<18} {r.completed:>4}/{r.attempted:<4} {ttft.p50 or 0:>9.2f} "
              f"{ttft.p99 or 0:>9.2f} {r.stream_events:>8} {deltas:>8} {cpu:>9.2f} {rate:>12.0f} "
              f"{r.client_cpu_ms_per_request or 0:>10.2f} {before + ' → ' + after:>22}")
    ratio = rates[0] / rates[1]
    ttft_p99 = rows[0][1].ttft.p99 or 0.0  # type: ignore[union-attr]
    limit = args.first + 1.5
    failed = []
    if ttft_p99 > limit:
        failed.append(f"first-token p99 {ttft_p99:.2f} s > {limit:.2f} s")
    if ratio < 0.5:
        failed.append(f"deltas per CPU-second ratio {ratio:.2f} < 0.5")
    if rows[0][1].errors or rows[1][1].errors:
        failed.append(f"errors: {rows[0][1].errors_by_kind} / {rows[1][1].errors_by_kind}")
    print(f"colloquy / bare: {ratio:.2f} of the deltas per CPU-second (target >= 0.5); "
          f"first-token p99 {ttft_p99:.2f} s (target <= {limit:.2f} s); load {load()} at the end")
    print("PASS" if not failed else "FAIL: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
