"""The load-test scenarios as a Locust file, for those who drive load with Locust.

    COLLOQUY_TOKEN=cq_... locust -f bench/locustfile.py --host http://127.0.0.1:8000
    COLLOQUY_TOKEN=cq_... python bench/locustfile.py --host URL --users 50 --seconds 30 [--stream]

The same scenario as ``colloquy loadtest``: each simulated user creates a conversation, then
sends turns one after the other (``ChatUser``: JSON replies; ``StreamingChatUser``: server-sent
events, first token recorded as its own entry). The second form runs Locust in this process
(its library API: no web UI, no extra processes) for ``--seconds`` and prints one JSON summary
with Locust's own percentiles; tests/test_locust.py runs it on loopback.

Locust runs on gevent (it monkey-patches the process on import), so run it in a process of its
own, never inside an asyncio program or the test process.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import HttpUser, between, events, task

TOPICS = ["rice", "lentils", "pasta", "eggs", "tomatoes"]


class ChatUser(HttpUser):
    """A person chatting: one conversation, turns one after the other, JSON replies."""

    wait_time = between(0, 0.01)
    stream = False

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['COLLOQUY_TOKEN']}"
        self.turn = 0
        r = self.client.post("/v1/conversations", json={"title": "locust"},
                             name="create conversation")
        self.conversation = r.json()["id"]

    def message(self) -> dict[str, Any]:
        self.turn += 1
        return {"content": f"Turn {self.turn}: what would you cook tonight with "
                           f"{TOPICS[self.turn % len(TOPICS)]}?", "stream": self.stream}

    @task
    def send(self) -> None:
        with self.client.post(f"/v1/conversations/{self.conversation}/messages",
                              json=self.message(), name="turn", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
            elif not r.json().get("text"):
                r.failure("no text in the reply")


class StreamingChatUser(ChatUser):
    """The same, streamed: the time to the first ``delta`` event is reported as ``first token``."""

    stream = True

    @task
    def send(self) -> None:
        t0 = time.perf_counter()
        first: float | None = None
        done = False
        with self.client.post(f"/v1/conversations/{self.conversation}/messages",
                              json=self.message(), name="streamed turn", stream=True,
                              catch_response=True) as r:
            event = ""
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "delta" and first is None:
                    first = time.perf_counter() - t0
                elif line.startswith("data:") and event == "done":
                    done = True
                elif line.startswith("data:") and event == "error":
                    r.failure(line[5:].strip())
                    return
            if not done:
                r.failure("the stream ended without a done event")
                return
        if first is not None:
            events.request.fire(request_type="SSE", name="first token", response_time=first * 1000,
                                response_length=0, exception=None, context={})


def run(host: str, users: int, seconds: float, stream: bool,
        min_turns: int | None = None) -> dict[str, Any]:
    """Locust in this process for ``seconds`` (or until ``min_turns`` turns are done, if
    sooner); its statistics as a dict."""
    import gevent
    from locust.env import Environment

    env = Environment(user_classes=[StreamingChatUser if stream else ChatUser], host=host,
                      events=events)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    name = "streamed turn" if stream else "turn"

    def stop() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if min_turns is not None and env.stats.get(name, "POST").num_requests >= min_turns:
                break
            gevent.sleep(0.1)
        runner.quit()

    gevent.spawn(stop)
    runner.greenlet.join()
    out: dict[str, Any] = {"users": users, "seconds": seconds, "entries": {}}
    for (name, method), entry in env.stats.entries.items():
        out["entries"][name] = {
            "method": method, "requests": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "rps": round(entry.total_rps, 2),
        }
    out["errors"] = {str(e.error): e.occurrences for e in env.stats.errors.values()}
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the scenario with Locust, in process.")
    ap.add_argument("--host", required=True)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--min-turns", type=int, help="stop once this many turns are done")
    args = ap.parse_args()
    print(json.dumps(run(args.host, args.users, args.seconds, args.stream, args.min_turns),
                     indent=2))
