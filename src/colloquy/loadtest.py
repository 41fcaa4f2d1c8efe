"""``colloquy loadtest``: N simulated users holding multi-turn conversations against a running
``colloquy serve``, reporting throughput, latency percentiles, errors and time to first token.

Why a built-in asyncio client beside the Locust file (``bench/locustfile.py``, the same
scenarios for those who run Locust): the load is a fixed script (create a conversation, then T
turns, each waiting for the previous reply, as a person would), the report comes back as JSON for
docs and CI, and it must cost far less than the server it measures. Each simulated user keeps
one keep-alive connection of its own (a client with a one-connection pool: a single pool of N
connections costs O(N) per request to search), SSE is parsed by httpx-sse, and the generator's
own CPU per request is reported beside the percentiles (``client_cpu_ms_per_request``; target
<= 1 ms, bench/load.py).

Safety rails: loopback only (``--allow-remote`` to point it elsewhere, e.g. a staging box you
own), at most :data:`MAX_USERS` users and :data:`MAX_TURNS` turns each, and a wall-clock bound
(``--duration``) after which no new turn starts.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import aconnect_sse
from pydantic import BaseModel, Field

from .errors import ColloquyError, ConfigError

try:  # the server extra's: the cheap client for JSON turns
    import aiohttp
except ImportError:  # pragma: no cover - without it, httpx for every turn
    aiohttp = None  # type: ignore[assignment]

#: A simulated user's client: an aiohttp session (JSON turns) or an httpx client (streams).
Client = Any
#: What a failed request raises, whichever client sent it.
_CLIENT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, ValueError) + (
    (aiohttp.ClientError,) if aiohttp is not None else ())
_CREATE_ERRORS: tuple[type[Exception], ...] = (*_CLIENT_ERRORS, asyncio.TimeoutError)

MAX_USERS = 1000
MAX_TURNS = 1000
MAX_DURATION = 3600.0


class LatencyStats(BaseModel):
    """Seconds; percentiles by the nearest-rank method."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


class LoadTestResult(BaseModel):
    url: str
    users: int
    turns_per_user: int
    stream: bool
    #: Turns that got a complete reply.
    completed: int = 0
    #: Turns attempted (completed + failed); conversation creations are not turns.
    attempted: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    conversations: int = 0
    duration_s: float = 0.0
    #: Completed turns per second over the whole run.
    throughput_rps: float = 0.0
    latency: LatencyStats = Field(default_factory=LatencyStats)
    #: Time to the first streamed text (only with ``stream``).
    ttft: LatencyStats | None = None
    #: True when --duration stopped the run before every turn was played.
    stopped_by_duration: bool = False
    output_tokens: int = 0
    #: The generator's own CPU (user + system) over the run, and per request sent: a load
    #: generator that costs as much as the server measures itself, not the server.
    client_cpu_s: float = 0.0
    client_cpu_ms_per_request: float | None = None
    #: Requests sent (conversation creations and turns).
    requests: int = 0
    #: Streamed ``delta`` events received (only with ``stream``).
    stream_events: int = 0

    def render(self) -> str:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1000:.1f} ms"

        lines = [
            f"{self.users} users x {self.turns_per_user} turns against {self.url} "
            f"({'streaming' if self.stream else 'JSON replies'})",
            f"  turns completed {self.completed}/{self.attempted} in {self.duration_s:.2f} s"
            f"  ->  {self.throughput_rps:.1f} turns/s"
            + ("  (stopped by --duration)" if self.stopped_by_duration else ""),
            f"  latency  p50 {ms(self.latency.p50)}  p95 {ms(self.latency.p95)}  "
            f"p99 {ms(self.latency.p99)}  max {ms(self.latency.max)}",
        ]
        if self.ttft is not None:
            lines.append(f"  first token  p50 {ms(self.ttft.p50)}  p95 {ms(self.ttft.p95)}  "
                         f"p99 {ms(self.ttft.p99)}")
        per = self.client_cpu_ms_per_request
        lines.append(f"  generator CPU {self.client_cpu_s:.2f} s for {self.requests} requests"
                     + (f" ({per:.2f} ms per request)" if per is not None else ""))
        lines.append(f"  errors {self.errors}" + (
            "  " + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_kind.items()))
            if self.errors_by_kind else ""))
        return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def stats(values: list[float]) -> LatencyStats:
    if not values:
        return LatencyStats()
    v = sorted(values)
    return LatencyStats(count=len(v), mean=round(sum(v) / len(v), 6), p50=percentile(v, 50),
                        p95=percentile(v, 95), p99=percentile(v, 99), max=v[-1])


def check_url(url: str, allow_remote: bool = False) -> str:
    """The base URL without a trailing slash; refuses non-loopback hosts unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url must look like http://127.0.0.1:8000, not {url!r}")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ConfigError(f"refusing to load-test {host}: only loopback addresses (127.0.0.1, "
                          "::1, localhost) unless you pass --allow-remote for a server you own")
    return url.rstrip("/")


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    attempted: int = 0
    requests: int = 0
    stream_events: int = 0
    conversations: int = 0
    output_tokens: int = 0
    stopped: bool = False


def _message(user: int, turn: int) -> str:
    return (f"Hello, this is simulated user {user}, turn {turn + 1}. What would you cook "
            f"tonight with {['rice', 'lentils', 'pasta', 'eggs', 'tomatoes'][turn % 5]}?")


async def _post_json(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST a JSON body; the status and the decoded JSON answer (None unless 2xx)."""
    if isinstance(client, httpx.AsyncClient):
        r = await client.post(path, json=body)
        return r.status_code, r.json() if 200 <= r.status_code < 300 else None
    async with client.post(path, json=body) as resp:
        ok = 200 <= resp.status < 300
        return resp.status, (await resp.json(content_type=None)) if ok else None


async def _turn(client: Client, conv: str, text: str, stream: bool, tally: _Tally) -> None:
    path = f"/v1/conversations/{conv}/messages"
    body = {"content": text, "stream": stream}
    t0 = time.perf_counter()
    tally.attempted += 1
    tally.requests += 1
    try:
        if not stream:
            status, reply = await _post_json(client, path, body)
            if status != 200:
                tally.errors[f"http {status}"] += 1
                return
            tally.latencies.append(time.perf_counter() - t0)
            tally.output_tokens += int((reply.get("usage") or {}).get("output_tokens") or 0)
            return
        assert isinstance(client, httpx.AsyncClient)
        first: float | None = None
        done = None
        async with aconnect_sse(client, "POST", path, json=body) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                tally.errors[f"http {source.response.status_code}"] += 1
                return
            async for event in source.aiter_sse():
                if event.event == "delta":
                    tally.stream_events += 1
                    if first is None:
                        first = time.perf_counter() - t0
                elif event.event == "done":
                    done = json.loads(event.data)
                elif event.event == "error":
                    tally.errors["stream error"] += 1
                    return
        if done is None:
            tally.errors["stream ended without done"] += 1
            return
        tally.latencies.append(time.perf_counter() - t0)
        tally.ttfts.append(first if first is not None else time.perf_counter() - t0)
        tally.output_tokens += int((done.get("usage") or {}).get("output_tokens") or 0)
    except (httpx.TimeoutException, asyncio.TimeoutError):
        tally.errors["timeout"] += 1
    except _CLIENT_ERRORS as e:
        tally.errors[type(e).__name__] += 1


async def _user(client: Client, user: int, turns: int, stream: bool,
                deadline: float, tally: _Tally) -> None:
    tally.requests += 1
    try:
        status, created = await _post_json(client, "/v1/conversations",
                                           {"title": f"loadtest user {user}"})
    except _CREATE_ERRORS as e:
        tally.errors[f"create: {type(e).__name__}"] += 1
        return
    if status not in (200, 201):
        tally.errors[f"create: http {status}"] += 1
        return
    tally.conversations += 1
    conv = created["id"]
    for t in range(turns):
        if time.monotonic() >= deadline:
            tally.stopped = True
            return
        await _turn(client, conv, _message(user, t), stream, tally)


def _json_session(base: str, token: str, timeout: float, tls: ssl.SSLContext) -> Client:
    """One user's client for JSON turns: an aiohttp session on one keep-alive connection, with
    no cookie jar. aiohttp's own API costs a third of httpx's per request (0.25 against 0.82 ms
    of generator CPU against bench/baseline_app.py, 50 users, load average 9), and the
    generator must stay far cheaper than the server it measures. Without aiohttp: httpx."""
    if aiohttp is None:  # pragma: no cover
        return _client(base, token, timeout, tls)
    return aiohttp.ClientSession(
        base_url=base, headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(limit=1, ssl=tls), cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout))


def _client(base: str, token: str, timeout: float, tls: ssl.SSLContext) -> httpx.AsyncClient:
    """One user's client for streamed turns (SSE parsed by httpx-sse) and the token check: one
    keep-alive connection (the TLS context shared: building one per client would cost
    milliseconds each). With the server extra installed, httpx runs over aiohttp's transport
    (httpx-aiohttp: the same client API, a parser in C), which halves its CPU per request."""
    options: dict[str, Any] = dict(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), trust_env=False,
        verify=tls)
    try:
        from httpx_aiohttp import HttpxAiohttpClient
    except ImportError:
        return httpx.AsyncClient(**options)
    return HttpxAiohttpClient(**options)


async def run_loadtest_async(
    url: str, token: str, *, users: int = 10, turns: int = 5, stream: bool = False,
    duration: float = 60.0, timeout: float = 60.0, allow_remote: bool = False,
) -> LoadTestResult:
    base = check_url(url, allow_remote)
    if not 1 <= users <= MAX_USERS:
        raise ConfigError(f"--users must be 1-{MAX_USERS}, not {users}")
    if not 1 <= turns <= MAX_TURNS:
        raise ConfigError(f"--turns must be 1-{MAX_TURNS}, not {turns}")
    if not 0 < duration <= MAX_DURATION:
        raise ConfigError(f"--duration must be between 0 and {MAX_DURATION:.0f} seconds")
    if not token:
        raise ConfigError("a token is needed: --token or COLLOQUY_TOKEN "
                          "(create one with: colloquy users add NAME)")
    tally = _Tally()
    tls = ssl.create_default_context()
    clients: list[Client] = []
    try:
        async with _client(base, token, timeout, tls) as check:
            r = await check.get("/v1/me")
        if r.status_code in (401, 403):
            raise ConfigError(f"the server refused the token (HTTP {r.status_code})")
        clients = [_client(base, token, timeout, tls) if stream
                   else _json_session(base, token, timeout, tls) for _ in range(users)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = time.monotonic() + duration
        tasks = [asyncio.create_task(_user(clients[u], u, turns, stream, deadline, tally))
                 for u in range(users)]
        # A turn already started is allowed its own timeout past the deadline, no more.
        _, pending = await asyncio.wait(tasks, timeout=duration + timeout)
        for task in pending:
            task.cancel()
            tally.stopped = True
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await asyncio.gather(*(c.aclose() if isinstance(c, httpx.AsyncClient) else c.close()
                               for c in clients), return_exceptions=True)
    completed = len(tally.latencies)
    return LoadTestResult(
        url=base, users=users, turns_per_user=turns, stream=stream, completed=completed,
        attempted=tally.attempted, errors=sum(tally.errors.values()),
        errors_by_kind=dict(tally.errors), conversations=tally.conversations,
        duration_s=round(elapsed, 4), throughput_rps=round(completed / elapsed, 2) if elapsed else 0.0,
        latency=stats(tally.latencies), ttft=stats(tally.ttfts) if stream else None,
        stopped_by_duration=tally.stopped, output_tokens=tally.output_tokens,
        client_cpu_s=round(cpu, 4), requests=tally.requests, stream_events=tally.stream_events,
        client_cpu_ms_per_request=round(1000 * cpu / tally.requests, 4) if tally.requests else None,
    )


def run_loadtest(url: str, token: str, **kwargs: Any) -> LoadTestResult:
    """The blocking form of :func:`run_loadtest_async` (on uvloop when it is installed, as
    with the server extra: a cheaper event loop for the generator too)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run_loadtest_async(url, token, **kwargs))
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise ColloquyError(f"cannot reach {url}: {e} (is colloquy serve running?)") from e


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -- the command ---------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser("loadtest", help="simulate N users chatting with a running colloquy serve")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (loopback only)")
    p.add_argument("--token", help="a bearer token (default $COLLOQUY_TOKEN; colloquy users add)")
    p.add_argument("--users", type=int, default=10, metavar="N", help="concurrent users")
    p.add_argument("--turns", type=int, default=5, metavar="T", help="turns per user")
    p.add_argument("--stream", action="store_true", help="stream replies (measures first token)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="stop starting turns after S seconds (default 60)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per request")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --url (only for servers you own)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args: argparse.Namespace) -> int:
    result = run_loadtest(
        args.url, args.token or os.environ.get("COLLOQUY_TOKEN", ""), users=args.users,
        turns=args.turns, stream=args.stream, duration=args.duration, timeout=args.timeout,
        allow_remote=args.allow_remote,
    )
    sys.stdout.write((result.model_dump_json(indent=2) if args.json else result.render()) + "\n")
    return 1 if result.errors else 0
