"""Scale-out: turns/s and latency of one HTTP turn with 1, 2 and 4 ``colloquy serve`` worker
processes over SQLite and over PostgreSQL, and the cost of the cross-process checks.

    python bench/scaleout.py [--postgres URL] [--workers 1,2,4] [--clients 4,16,64,128]
                             [--latency 0.2] [--seconds 6] [--saturation 0.5]
                             [--backends sqlite,postgres] [--json]

For each back end and worker count it starts a real ``colloquy serve --workers N`` with the echo
model answering after ``--latency`` seconds (``echo?latency=0.2``), then drives it on loopback
with closed-loop clients (each its own user and conversation; each sends a turn as soon as the
previous one is answered) at each ``--clients`` level for ``--seconds``. The load generator is
asyncio over raw keep-alive sockets, a few hundred microseconds of CPU per request, so it
measures the server rather than itself; its CPU time is printed beside the figures.

A level's ideal throughput is clients / latency (every turn takes just the model's time); the
table prints turns/s beside it and their ratio (``eff``). A configuration **saturates** at the
first level where that ratio falls under ``--saturation`` (default 0.5: a turn then waits in the
server at least as long as the model takes; the workers' CPU, or the store, is the limit from
there on); the table marks it and the summary prints the highest turns/s seen.

The cross-process checks (a deleted or re-created conversation is never served, writes on
behalf of a deleted owner are refused) cost, per request: the conversation generation read in
the same query as the new messages (``read_log`` against a plain ``load``), and the owner check
of a derived-record write. Both are timed directly on each store; the target is under 1 ms at
the median, and the exit status is 1 when it is missed.

PostgreSQL: ``--postgres URL`` (or ``COLLOQUY_BENCH_POSTGRES_URL``, or
``COLLOQUY_TEST_POSTGRES_URL``); the bench works in a throwaway schema and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _serve import free_port, running, serve_command

ROOT = Path(__file__).resolve().parents[1]
CHECK_TARGET_MS = 1.0


@contextmanager
def serve(db: str, workers: int, latency: float) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = serve_command(port, db, f"echo?latency={latency}", "--workers", str(workers),
                        "--threads", "256")
    with running(cmd, port, settle=0.5 * workers) as proc:  # every worker has opened its store
        yield port, proc


# -- the load generator: asyncio, raw HTTP/1.1 keep-alive ----------------------------------------


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        try:
            return await self._request(method, path, body)
        except (ConnectionError, IndexError, asyncio.IncompleteReadError):
            # The server closed an idle keep-alive connection (uvicorn: after 5 s): once more,
            # on a new one. Nothing was sent on the closed one but this request.
            self.close()
            self.reader = self.writer = None
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def drive(port: int, tokens: Sequence[str], clients: int, seconds: float) -> dict[str, Any]:
    conns = [Client(port, tokens[i]) for i in range(clients)]

    async def start(c: Client) -> str:  # warm: each conversation has a turn and a cached Chat
        status, body = await c.request("POST", "/v1/conversations", {})
        assert status in (200, 201), body
        cid: str = json.loads(body)["id"]
        await c.request("POST", f"/v1/conversations/{cid}/messages", {"content": "warm up"})
        return cid

    cids = list(await asyncio.gather(*(start(c) for c in conns)))
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    cpu0 = time.process_time()

    async def loop(c: Client, cid: str) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _ = await c.request("POST", f"/v1/conversations/{cid}/messages",
                                        {"content": f"turn {i} of a scale-out bench"})
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop(c, cid) for c, cid in zip(conns, cids)))
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    for c in conns:
        c.close()
    latencies.sort()
    n = len(latencies)
    return {
        "clients": clients, "turns": n, "errors": errors, "turns_per_s": n / wall,
        "p50_ms": 1000 * latencies[n // 2] if n else float("nan"),
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "generator_cpu_ms_per_turn": 1000 * cpu / max(1, n),
    }


# -- the cross-process checks, timed on each store ------------------------------------------------


def check_costs(store: Any, rounds: int = 400) -> dict[str, float]:
    """Median extra milliseconds per request: generation read with the new messages (read_log
    against load), and an owner-checked derived write against an unchecked one."""
    from colloquy.memory.records import Summary
    from colloquy.messages import Message
    from colloquy.store import NewMessage
    from colloquy.store import Owner

    cid = f"bench-{uuid.uuid4().hex[:8]}"
    conv = store.create_conversation(id=cid, user_id="bench")
    for i in range(50):
        store.append(cid, [NewMessage(message=Message.user(f"message {i}")),
                           NewMessage(message=Message.assistant(f"reply {i}"))])
    last = store.get_conversation(cid).last_seq
    owner = Owner(conversation_id=cid, generation=conv.generation)

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0)

    read, load, checked, unchecked = [], [], [], []
    for i in range(rounds):  # interleaved, so a busy moment hits both sides alike
        read.append(timed(lambda: store.read_log(cid, after_seq=last - 2)))
        load.append(timed(lambda: store.load(cid, after_seq=last - 2)))
        s = Summary(conversation_id=cid, start_seq=1, end_seq=2, text=f"s{i}")
        checked.append(timed(lambda: store.save_summary(s, owner=owner)))
        s2 = Summary(conversation_id=cid, start_seq=1, end_seq=2, text=f"u{i}")
        unchecked.append(timed(lambda: store.save_summary(s2)))
    store.delete_conversation(cid)
    return {
        "read_log_ms": statistics.median(read), "load_ms": statistics.median(load),
        "generation_check_ms": statistics.median(read) - statistics.median(load),
        "owner_checked_write_ms": statistics.median(checked),
        "unchecked_write_ms": statistics.median(unchecked),
        "owner_check_ms": statistics.median(checked) - statistics.median(unchecked),
    }


# -- main -----------------------------------------------------------------------------------------


def pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postgres", default=os.environ.get("COLLOQUY_BENCH_POSTGRES_URL")
                    or os.environ.get("COLLOQUY_TEST_POSTGRES_URL"))
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--clients", default="4,16,64,128")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--saturation", type=float, default=0.5,
                    help="saturated below this share of the ideal turns/s (clients / latency)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    levels = [int(c) for c in args.clients.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    if "postgres" in backends and not args.postgres:
        print("postgres: skipped (give --postgres URL or set COLLOQUY_BENCH_POSTGRES_URL)")
        backends.remove("postgres")

    tmp = Path(tempfile.mkdtemp(prefix="colloquy-scaleout-"))
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    rows: list[dict[str, Any]] = []
    checks: dict[str, dict[str, float]] = {}
    load0 = os.getloadavg()
    try:
        for backend in backends:
            if backend == "sqlite":
                db = str(tmp / "scaleout.db")
            else:
                import psycopg
                from psycopg import sql

                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                db = pg_schema_url(args.postgres, schema)
            from colloquy.store import open_store
            from colloquy.store.users import issue_token

            store = open_store(db)
            tokens = [issue_token(store, f"u{i}") for i in range(max(levels))]
            checks[backend] = check_costs(store)
            store.close()
            for n in workers:
                with serve(db, n, args.latency) as (port, _):
                    for clients in levels:
                        r = asyncio.run(drive(port, tokens, clients, args.seconds))
                        r.update(backend=backend, workers=n, load=os.getloadavg()[0],
                                 ideal=clients / args.latency)
                        rows.append(r)
                        if not args.json:
                            print(f"  {backend:8} workers={n} clients={clients:4} "
                                  f"{r['turns_per_s']:7.1f} turns/s  p50 {r['p50_ms']:7.1f} ms  "
                                  f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  "
                                  f"load {r['load']:.1f}", flush=True)
    finally:
        if "postgres" in backends:
            import psycopg
            from psycopg import sql

            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        shutil.rmtree(tmp, ignore_errors=True)

    failed = [b for b, c in checks.items()
              if c["generation_check_ms"] >= CHECK_TARGET_MS or c["owner_check_ms"] >= CHECK_TARGET_MS]
    if args.json:
        print(json.dumps({"rows": rows, "checks": checks, "load_before": load0,
                          "load_after": os.getloadavg(), "cpus": os.cpu_count()}, indent=2))
        return 1 if failed else 0

    print(f"\nmachine: {os.cpu_count()} cores, load average before {load0[0]:.2f} "
          f"{load0[1]:.2f} {load0[2]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"model: echo answering after {args.latency:g} s; closed-loop clients, each its own "
          f"user and conversation; {args.seconds:g} s per level\n")
    print(f"{'back end':9} {'workers':>7} {'clients':>7} {'turns/s':>8} {'ideal':>6} "
          f"{'eff':>5} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'gen cpu ms':>10} {'load':>5}")
    for b in backends:
        for n in workers:
            sat = None
            for r in rows:
                if r["backend"] != b or r["workers"] != n:
                    continue
                mark = ""
                if sat is None and r["turns_per_s"] < args.saturation * r["ideal"]:
                    sat = r
                    mark = "  <- saturated"
                print(f"{b:9} {n:>7} {r['clients']:>7} {r['turns_per_s']:>8.1f} {r['ideal']:>6.0f} "
                      f"{r['turns_per_s'] / r['ideal']:>5.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6} "
                      f"{r['generator_cpu_ms_per_turn']:>10.2f} {r['load']:>5.1f}{mark}")
    print(f"\nsaturation (first level under {args.saturation:g} x clients/latency) and the best turns/s:")
    for b in backends:
        for n in workers:
            mine = [r for r in rows if r["backend"] == b and r["workers"] == n]
            sat = next((r for r in mine if r["turns_per_s"] < args.saturation * r["ideal"]), None)
            best = max(mine, key=lambda r: r["turns_per_s"])
            where = f"at {sat['clients']} clients" if sat else f"not reached ({levels[-1]} clients)"
            print(f"  {b:9} {n} worker(s): saturates {where}; best {best['turns_per_s']:.0f} "
                  f"turns/s (p50 {best['p50_ms']:.0f} ms, p99 {best['p99_ms']:.0f} ms)")
    print(f"\ncross-process checks, median per request (target < {CHECK_TARGET_MS:g} ms):")
    for b, c in checks.items():
        print(f"  {b:9} generation read with the new messages: read_log {c['read_log_ms']:.3f} ms "
              f"vs load {c['load_ms']:.3f} ms -> {c['generation_check_ms']:+.3f} ms; owner-checked "
              f"write {c['owner_checked_write_ms']:.3f} ms vs {c['unchecked_write_ms']:.3f} ms "
              f"-> {c['owner_check_ms']:+.3f} ms")
    if failed:
        print(f"FAIL: cross-process checks over {CHECK_TARGET_MS:g} ms on {failed}")
        return 1
    print("ok: cross-process checks under target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
