"""One worker of ``colloquy serve`` under load: turns in flight, CPU per turn, memory per turn.

    python bench/load.py [--scenarios latency,cpu,memory] [--quick] [--json]

Each scenario starts its own ``colloquy serve`` (one worker, SQLite, default flags but
``--rate-limit off``: the generator sends every user's requests with one token) with the
offline echo model, drives it with ``colloquy loadtest``'s generator in this process, and reads
the server's CPU from /proc. Printed beside every figure: the machine's load (os.getloadavg)
and the generator's own CPU per request.

Scenarios and targets (issue 16):

* ``latency``: 400 users x 2 turns on a 5 s model: p50 <= 5.5 s, p99 <= 7.5 s; 1,000 users x 2
  turns on a 10 s model: p50 <= 11 s, p99 <= 15 s (turns in flight bounded by memory, not by
  threads);
* ``cpu``: server CPU per JSON turn with the echo model (50 users x 20 turns) <= 2 ms, a burst
  of 400 simultaneous first turns, and a profile of the server over the same load (yappi,
  every thread: where the CPU goes, by package and by function);
* ``memory``: the server's resident memory per turn in flight (1,000 turns waiting on a 10 s
  model), the figure behind ``serve --max-inflight``'s default.

The generator's CPU per request must stay <= 1 ms, or it measures itself. Exit status 0 when
every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _serve import free_port, running, serve_command
from colloquy.loadtest import LoadTestResult, _loop_factory, run_loadtest_async
from colloquy.store.sqlite import SQLiteStore
from colloquy.store.users import issue_token

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    token: str

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def serve(model: str, *flags: str, profile: Path | None = None,
          argv: list[str] | None = None) -> Iterator[Server]:
    """``colloquy serve`` on a fresh SQLite database (or ``argv``, another server command)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        store = SQLiteStore(db)
        token = issue_token(store, "bench")
        store.close()
        port = free_port()
        prefix = ([sys.executable, str(Path(__file__).with_name("profiled_serve.py")), str(profile)]
                  if profile else [])
        cmd = ([*argv, "--port", str(port)] if argv
               else serve_command(port, str(db), model, *flags, prefix=prefix))
        with running(cmd, port) as proc:
            yield Server(f"http://127.0.0.1:{port}", proc, token)


@dataclass
class Row:
    scenario: str
    users: int
    turns: int
    model: str
    result: dict[str, Any]
    server_cpu_ms_per_turn: float | None
    load_before: str
    load_after: str
    targets: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def drive(server: Server, users: int, turns: int, *, stream: bool = False,
          timeout: float = 120.0, during: Any = None) -> tuple[LoadTestResult, float]:
    """Run the generator; return its result and the server's CPU seconds over the run."""
    async def go() -> LoadTestResult:
        work = asyncio.ensure_future(run_loadtest_async(
            server.url, server.token, users=users, turns=turns, stream=stream,
            duration=3600, timeout=timeout))
        if during is not None:
            await during(work)
        return await work

    cpu0 = cpu_seconds(server.pid)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:  # uvloop, as colloquy loadtest
        result = runner.run(go())
    return result, cpu_seconds(server.pid) - cpu0


def check(row: Row) -> Row:
    lat = row.result["latency"]
    for name, limit in row.targets.items():
        value = (row.result["client_cpu_ms_per_request"] if name == "generator_ms"
                 else row.server_cpu_ms_per_turn if name == "cpu_ms"
                 else lat.get(name))
        if value is None or value > limit:
            row.failed.append(f"{name} {value} > {limit}")
    if row.result["errors"]:
        row.failed.append(f"{row.result['errors']} errors: {row.result['errors_by_kind']}")
    return row


def scenario_latency(quick: bool) -> list[Row]:
    rows = []
    cases = [(400, 5.0, 5.5, 7.5), (1000, 10.0, 11.0, 15.0)]
    if quick:
        cases = [(100, 2.0, 2.5, 3.5)]
    for users, latency, p50, p99 in cases:
        model = f"echo?latency={latency:g}"
        with serve(model) as server:
            before = load()
            result, cpu = drive(server, users, 2)
            rows.append(check(Row(
                f"{users} users, {latency:g} s model", users, 2, model, result.model_dump(),
                round(1000 * cpu / max(result.completed, 1), 2), before, load(),
                {"p50": p50, "p99": p99, "generator_ms": 1.0})))
    return rows


def scenario_cpu(quick: bool, profile_top: int) -> tuple[list[Row], str]:
    rows = []
    users, turns = (20, 10) if quick else (50, 20)
    with serve("echo") as server:
        drive(server, 10, 2)  # warm up: imports, first connections, caches
        before = load()
        result, cpu = drive(server, users, turns)
        rows.append(check(Row(
            f"CPU per JSON turn ({users}x{turns})", users, turns, "echo", result.model_dump(),
            round(1000 * cpu / max(result.completed, 1), 2), before, load(),
            {"cpu_ms": 2.0, "generator_ms": 1.0})))
        burst = 100 if quick else 400
        before = load()
        result, cpu = drive(server, burst, 1)
        rows.append(check(Row(
            f"burst of {burst} first turns", burst, 1, "echo", result.model_dump(),
            round(1000 * cpu / max(result.completed, 1), 2), before, load(),
            {"generator_ms": 1.0})))
    baseline = [sys.executable, str(Path(__file__).with_name("baseline_app.py"))]
    with serve("", argv=baseline) as server:
        drive(server, 10, 2)
        before = load()
        result, cpu = drive(server, users, turns)
        rows.append(check(Row(
            f"bare FastAPI, same routes ({users}x{turns})", users, turns, "-", result.model_dump(),
            round(1000 * cpu / max(result.completed, 1), 2), before, load(),
            {"generator_ms": 1.0})))
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "server.prof"
        with serve("echo", profile=prof) as server:
            drive(server, 10, 2)  # warm up, unprofiled
            server.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            drive(server, users, turns)
            server.proc.send_signal(signal.SIGUSR2)
            done = Path(f"{prof}.done")
            deadline = time.monotonic() + 60
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        report = profile_report(prof, profile_top)
    return rows, report


def profile_report(path: Path, top: int) -> str:
    """Where the server's time goes: own time by package, then the costliest functions."""
    stats = pstats.Stats(str(path))
    by_package: dict[str, float] = {}
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        by_package[_package(filename)] = by_package.get(_package(filename), 0.0) + tottime
    lines = ["server profile (yappi, CPU of every thread over the profiled load; own time by "
             "package, % of the total):"]
    for name, t in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"  {100 * t / total:5.1f}%  {name}")
    lines.append(f"costliest functions (own time), top {top}:")
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    for (filename, line, fn), (_, calls, tottime, cumtime, _) in ranked[:top]:
        short = "/".join(Path(filename).parts[-2:])
        lines.append(f"  {100 * tottime / total:5.1f}%  {calls:>8} calls  {short}:{line} {fn}")
    lines.append(f"colloquy and web-framework functions by time including callees, top {top}:")
    ours = [kv for kv in stats.stats.items()  # type: ignore[attr-defined]
            if any(k in kv[0][0] for k in ("colloquy", "fastapi", "starlette", "uvicorn"))]
    for (filename, line, fn), (_, calls, _, cumtime, _) in sorted(
            ours, key=lambda kv: -kv[1][3])[:top]:
        short = "/".join(Path(filename).parts[-2:])
        lines.append(f"  {100 * cumtime / total:5.1f}%  {calls:>8} calls  {short}:{line} {fn}")
    return "\n".join(lines)


def _package(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C: sqlite3, select, json, ...)"
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    if "colloquy" in parts:
        i = parts.index("colloquy")
        return "colloquy." + parts[i + 1].removesuffix(".py") if i + 1 < len(parts) else "colloquy"
    return "stdlib: " + Path(filename).stem


def scenario_memory(quick: bool) -> list[Row]:
    users, latency = (200, 5.0) if quick else (1000, 10.0)
    model = f"echo?latency={latency:g}"
    rows = []
    with serve(model) as server:
        drive(server, 20, 1)  # warm up
        idle = rss_bytes(server.pid)
        peak = [idle]

        async def sample(work: asyncio.Future[Any]) -> None:
            while not work.done():
                peak[0] = max(peak[0], rss_bytes(server.pid))
                await asyncio.sleep(0.2)

        before = load()
        result, cpu = drive(server, users, 1, during=sample)
        per_turn = (peak[0] - idle) / users
        row = check(Row(f"memory: {users} turns in flight", users, 1, model, result.model_dump(),
                        round(1000 * cpu / max(result.completed, 1), 2), before, load()))
        row.result["rss_idle_mb"] = round(idle / 2**20, 1)
        row.result["rss_peak_mb"] = round(peak[0] / 2**20, 1)
        row.result["kb_per_turn_in_flight"] = round(per_turn / 1024, 1)
        rows.append(row)
    return rows


def render(rows: list[Row]) -> str:
    head = (f"{'scenario':<34} {'done':>9} {'wall s':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
            f"{'srv ms/turn':>11} {'gen ms/req':>10} {'load before→after':>22}  verdict")
    out = [head, "-" * len(head)]
    for r in rows:
        lat = r.result["latency"]

        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        out.append(
            f"{r.scenario:<34} {r.result['completed']:>4}/{r.result['attempted']:<4} "
            f"{r.result['duration_s']:>7.1f} {s(lat['p50']):>7} {s(lat['p95']):>7} "
            f"{s(lat['p99']):>7} {s(r.server_cpu_ms_per_turn):>11} "
            f"{s(r.result['client_cpu_ms_per_request']):>10} "
            f"{r.load_before + ' → ' + r.load_after:>22}  "
            + ("PASS" if not r.failed else "FAIL: " + "; ".join(r.failed)))
        if "kb_per_turn_in_flight" in r.result:
            out.append(f"{'':<34} rss idle {r.result['rss_idle_mb']} MB, peak "
                       f"{r.result['rss_peak_mb']} MB: {r.result['kb_per_turn_in_flight']} KB "
                       "per turn in flight")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="latency,cpu,memory")
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 users: 1,000 sockets
    wanted = set(args.scenarios.split(","))
    print(f"colloquy serve, one worker, SQLite; {os.cpu_count()} cores; load {load()} at start")
    rows: list[Row] = []
    report = ""
    if "latency" in wanted:
        rows += scenario_latency(args.quick)
    if "cpu" in wanted:
        cpu_rows, report = scenario_cpu(args.quick, args.profile_top)
        rows += cpu_rows
    if "memory" in wanted:
        rows += scenario_memory(args.quick)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    print(render(rows))
    if report:
        print(report)
    failed = [r for r in rows if r.failed]
    print(f"load {load()} at the end; {'all targets met' if not failed else f'{len(failed)} missed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
