"""Does an HTTP turn cost the same in a long conversation as in a short one?

    python bench/service.py [--sizes 0,1000,10000] [--turns 20]

Drives ``colloquy serve``'s app (FastAPI, in process through its test client: no network, the
same routes, auth and store) with the offline echo model over a SQLite file. For each size, the
conversation is first grown to that many turns directly in the store (as other devices would),
one request catches up with them, then ``--turns`` requests are timed. The service keeps each
conversation's Chat between requests, so a turn reads only what is new in the log: the target is
a flat per-turn time (within 1.5x from the smallest to the largest size).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi.testclient import TestClient

from colloquy import EchoModel, SQLiteStore
from colloquy.messages import Message
from colloquy.server import create_app
from colloquy.store import NewMessage
from colloquy.store.users import issue_token


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,1000,10000", help="conversation lengths, in turns")
    ap.add_argument("--turns", type=int, default=20, help="timed requests per size")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        token = issue_token(store, "bench")
        client = TestClient(create_app(store=store, model=EchoModel(), environ={}, rate_limit=None))
        headers = {"Authorization": f"Bearer {token}"}
        cid = client.post("/v1/conversations", json={}, headers=headers).json()["id"]

        def turn() -> float:
            t0 = time.perf_counter()
            r = client.post(f"/v1/conversations/{cid}/messages", json={"content": "hello"},
                            headers=headers)
            assert r.status_code == 200, r.text
            return 1000 * (time.perf_counter() - t0)

        print(f"{'turns':>7} {'catch-up ms':>12} {'p50 ms':>8} {'mean ms':>8} {'max ms':>8}")
        means = []
        for size in sizes:
            have = store.get_conversation(cid).last_seq // 2
            for i in range(have, size):  # other devices' turns, appended to the log directly
                store.append(cid, [NewMessage(message=Message.user(f"message {i} " * 8)),
                                   NewMessage(message=Message.assistant(f"reply {i} " * 16))])
            catch_up = turn()
            times = [turn() for _ in range(args.turns)]
            means.append(statistics.mean(times))
            print(f"{size:>7,} {catch_up:>12.1f} {statistics.median(times):>8.1f} "
                  f"{means[-1]:>8.1f} {max(times):>8.1f}")
        store.close()
    ratio = means[-1] / means[0]
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    print(f"mean HTTP turn at {sizes[-1]:,} turns vs {sizes[0]:,}: {ratio:.2f}x (target <= 1.5x): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
