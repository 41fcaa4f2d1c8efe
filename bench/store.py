"""How many turns per second does a store carry, and how long does each take, as more
conversations are active at once?

    python bench/store.py [--conversations 1,8,32] [--seconds 3] [--history 40]
                          [--postgres URL] [--no-postgres] [--json]

One "turn" is the store work of a real chat turn, without the model: take the conversation's turn
lock, append the user's message, load what is new in the log, append the reply (two appends =
two transactions, as in ``Chat``). N threads each drive their own conversation (already holding
``--history`` messages) as fast as they can for ``--seconds``; the table shows the total turns
per second and the p50/p99 latency of one turn.

PostgreSQL runs when ``--postgres URL`` is given or COLLOQUY_TEST_POSTGRES_URL is set; it uses a
throwaway schema that is dropped afterwards. SQLite uses a file in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from colloquy.messages import Message  # noqa: E402
from colloquy.store import NewMessage, SQLiteStore  # noqa: E402
from colloquy.usage import Usage  # noqa: E402


def one_turn(store: Any, conversation_id: str, seen: int, i: int) -> int:
    with store.lock(conversation_id):
        store.append(conversation_id, [NewMessage(message=Message.user(f"question {i} " * 8))])
        new = store.load(conversation_id, after_seq=seen)
        stored = store.append(conversation_id, [NewMessage(
            message=Message.assistant(f"answer {i} " * 30), model="bench",
            usage=Usage(input_tokens=500 + i, output_tokens=60), cost_usd=0.001,
        )])
    return stored[-1].seq if stored else seen + len(new)


def run(store: Any, conversations: int, seconds: float, history: int) -> dict[str, Any]:
    ids = []
    for _ in range(conversations):
        conv = store.create_conversation(user_id="bench", model="bench")
        msgs = [NewMessage(message=Message.user("hello " * 10) if k % 2 == 0
                           else Message.assistant("hi there " * 20)) for k in range(history)]
        if msgs:
            store.append(conv.id, msgs)
        ids.append(conv.id)
    latencies: list[list[float]] = [[] for _ in ids]
    start_gate = threading.Barrier(len(ids) + 1)
    stop_at = [0.0]

    def drive(k: int) -> None:
        seen, i = history, 0
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            seen = one_turn(store, ids[k], seen, i)
            latencies[k].append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(len(ids))]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    flat = sorted(x for per in latencies for x in per)
    q = statistics.quantiles(flat, n=100) if len(flat) >= 2 else [flat[0]] * 99
    return {
        "conversations": conversations, "turns": len(flat),
        "turns_per_s": len(flat) / elapsed,
        "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--history", type=int, default=40)
    ap.add_argument("--postgres", default=os.environ.get("COLLOQUY_TEST_POSTGRES_URL"))
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.conversations.split(",")]

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            store = SQLiteStore(Path(tmp) / f"bench-{n}.db")
            results.append({"store": "sqlite", **run(store, n, args.seconds, args.history)})
            store.close()
    if args.postgres and not args.no_postgres:
        from colloquy.store.postgres import PostgresStore
        import psycopg

        for sync in (True, False):
            for n in counts:
                schema = f"bench_{uuid.uuid4().hex[:10]}"
                store = PostgresStore(args.postgres, schema=schema, max_size=n + 4,
                                      synchronous_commit=sync)
                name = "postgres" if sync else "postgres*"
                try:
                    results.append({"store": name, **run(store, n, args.seconds, args.history)})
                finally:
                    store.close()
                    with psycopg.connect(args.postgres, autocommit=True) as conn:
                        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'store':<10} {'conversations':>13} {'turns/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'turns':>7}")
    for r in results:
        print(f"{r['store']:<10} {r['conversations']:>13} {r['turns_per_s']:>9.0f} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['turns']:>7}")
    print(f"(one turn = turn lock + append user + load new + append reply; {args.seconds:g} s per "
          f"row, {args.history} messages of history per conversation, threads in one process; "
          f"{os.cpu_count()} CPUs)")
    if any(r["store"] == "postgres*" for r in results):
        print("postgres* = PostgresStore(..., synchronous_commit=False): no wait for the WAL flush "
              "at commit, the durability of SQLite's WAL + synchronous=NORMAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
