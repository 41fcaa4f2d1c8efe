"""Turns in flight in the service: back-pressure past ``max_inflight``, a client that hangs up
stops the model call (every turn route, streamed or not, through a real ``colloquy serve`` and
a fake provider that notices the dropped connection), and SIGTERM drains turns up to a deadline."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from colloquy import EchoModel, SQLiteStore
from colloquy.server import create_app
from colloquy.server.inflight import MAX_DEFAULT, MIN_DEFAULT, TURN_BYTES, default_max_inflight
from colloquy.store.users import issue_token
from fake_anthropic import FakeAnthropic, Reply, stream_events, text
from server_helpers import add_user, bearer, clean_env, serve_in_thread, serve_process

KEY = "sk-ant-test-0123456789-secret"


def test_the_default_limit_is_sized_by_memory() -> None:
    gib = 1024**3
    assert default_max_inflight(8 * gib) == 8 * gib // 8 // TURN_BYTES
    assert default_max_inflight(64 * 1024**2) == MIN_DEFAULT
    assert default_max_inflight(10**15) == MAX_DEFAULT
    assert default_max_inflight() >= MIN_DEFAULT


@pytest.mark.parametrize("route", ["json", "sse", "openai", "openai-stream", "anthropic",
                                   "anthropic-stream"])
def test_past_the_limit_a_turn_is_refused_at_once_with_retry_after(
        tmp_path: Path, route: str) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    token = issue_token(store, "ada")
    app = create_app(store=store, model=EchoModel(latency=1.5), environ={}, rate_limit=None,
                     max_inflight=2)

    def send(client: httpx.Client, n: int) -> httpx.Response:
        if route.startswith(("openai", "anthropic")):
            path, kwargs = _compat_request(route, f"c{n}", "echo", route.endswith("stream"), "hi")
            return client.post(path, **kwargs)
        cid = client.post("/v1/conversations", json={}).json()["id"]
        return client.post(f"/v1/conversations/{cid}/messages",
                           json={"content": "hi", "stream": route == "sse"})

    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(token),
                                                   timeout=30) as client:
        held: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda n=n: held.append(send(client, n)))
                   for n in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while app.state.service.inflight.count < 2:
            assert time.monotonic() < deadline, "the two turns never got in flight"
            time.sleep(0.01)
        t0 = time.perf_counter()
        refused = send(client, 3)
        assert time.perf_counter() - t0 < 1.0  # at once, not after the turns in flight
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        error = refused.json()["error"]  # in the shape of the route's own API
        if route.startswith("openai"):
            assert error["code"] == "overloaded" and error["type"] == "server_error"
        elif route.startswith("anthropic"):
            assert error["type"] == "overloaded_error"
        else:
            assert error["type"] == "overloaded"
        for t in threads:
            t.join()
        assert [r.status_code for r in held] == [200, 200]
        assert app.state.service.inflight.count == 0  # every place was given back
        assert send(client, 4).status_code == 200
    store.close()


# -- disconnects, through a real colloquy serve ------------------------------------------------------


@contextmanager
def serve_claude(db: Path, fake: FakeAnthropic, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``colloquy serve`` on a Claude model whose API is the fake (a busy shared machine
    starts Python slowly: a long start-up allowance)."""
    env = clean_env(ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=fake.base_url)
    with serve_process(db, "--rate-limit", "off", *extra, model="claude-sonnet-4-6", env=env,
                       startup=120) as served:
        yield served


def _slow_stream() -> Reply:
    return Reply(events=stream_events(text("one two three four five six seven"), chunk=4),
                 event_delay=0.3)


def _last_reply(db: Path, url: str, token: str, cid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:  # the partial reply is stored as the turn unwinds
        messages = httpx.get(f"{url}/v1/conversations/{cid}", headers=bearer(token)).json()["messages"]
        if messages and messages[-1]["role"] == "assistant":
            return dict(messages[-1])
        assert time.monotonic() < deadline, f"no reply stored: {messages}"
        time.sleep(0.05)


def _compat_request(route: str, name: str, model: str, stream: bool, text: str
                    ) -> tuple[str, Any]:
    """(path, keyword arguments) of a compatible route's turn on the conversation ``name``."""
    headers = {"X-Colloquy-Conversation": name}
    messages = [{"role": "user", "content": text}]
    if route.startswith("openai"):
        return "/v1/chat/completions", {"headers": headers, "json": {
            "model": model, "stream": stream, "messages": messages}}
    return "/v1/messages", {"headers": {**headers, "anthropic-version": "2023-06-01"}, "json": {
        "model": model, "stream": stream, "max_tokens": 256, "messages": messages}}


@pytest.mark.parametrize("route", ["json", "sse", "openai", "openai-stream", "anthropic",
                                   "anthropic-stream"])
def test_a_client_that_hangs_up_stops_the_model_call(tmp_path: Path, route: str) -> None:
    db = tmp_path / "c.db"
    token = add_user(db, "ada")
    streaming = route in ("sse", "openai-stream", "anthropic-stream")
    with FakeAnthropic(api_key=KEY) as fake:
        fake.enqueue(_slow_stream() if streaming else Reply(json={}, delay=30))
        with serve_claude(db, fake) as (url, _):
            client = httpx.Client(base_url=url, headers=bearer(token), timeout=30)
            if route.startswith(("openai", "anthropic")):
                cid = "conv-1"
                path, kwargs = _compat_request(route, cid, "claude-sonnet-4-6", streaming,
                                               "tell me")
                req = client.build_request("POST", path, **kwargs)
            else:
                cid = client.post("/v1/conversations", json={}).json()["id"]
                req = client.build_request("POST", f"/v1/conversations/{cid}/messages",
                                           json={"content": "tell me", "stream": streaming})
            if streaming:  # read until the first text has come through, then hang up
                response = client.send(req, stream=True)
                seen = ""
                for line in response.iter_lines():
                    if "one" in line or "tw" in line:
                        seen = line
                        break
                assert seen
                response.close()
            else:  # send the request on a raw socket, wait until the model call is under
                # way, then hang up (an HTTP client would wait for the response headers)
                sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
                head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
                sock.sendall(f"POST {req.url.raw_path.decode()} HTTP/1.1\r\n{head}\r\n".encode()
                             + req.read())
                deadline = time.monotonic() + 10
                while not fake.requests:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                time.sleep(0.1)
                sock.close()
            client.close()
            closed_at = time.monotonic()
            assert fake.drops.wait(5), "the model call was not cut"
            assert fake.drops.times[0] - closed_at < 0.1 + 0.15  # 100 ms, plus the fake's poll
            reply = _last_reply(db, url, token, cid)
            assert reply["stop_reason"] == "cancelled"
            assert reply["usage"]["input_tokens"] > 0
            assert reply["cost_usd"] > 0  # billed: the provider bills a cut call too
            if streaming:
                assert reply["text"].startswith("one")
                assert reply["usage"]["output_tokens"] > 0  # what was generated, billed


def _send_in_thread(url: str, token: str, cid: str, out: list[Any]) -> threading.Thread:
    def go() -> None:
        try:
            out.append(httpx.post(f"{url}/v1/conversations/{cid}/messages", json={"content": "hi"},
                                  headers=bearer(token), timeout=60))
        except httpx.HTTPError as e:
            out.append(e)

    t = threading.Thread(target=go)
    t.start()
    return t


def test_sigterm_lets_a_short_turn_finish(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    token = add_user(db, "ada")
    with FakeAnthropic(api_key=KEY) as fake:
        fake.enqueue(Reply(json=_message_json("all of it"), delay=1.0))
        with serve_claude(db, fake, "--drain-timeout", "20") as (url, proc):
            cid = httpx.post(f"{url}/v1/conversations", json={}, headers=bearer(token)).json()["id"]
            out: list[Any] = []
            t = _send_in_thread(url, token, cid, out)
            while not fake.requests:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            t.join(30)
            # uvicorn re-raises the signal once it has shut down gracefully
            assert proc.wait(30) in (0, -signal.SIGTERM)
        assert out[0].status_code == 200 and out[0].json()["text"] == "all of it"


def test_sigterm_cuts_a_long_turn_at_the_deadline_and_stores_it(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    token = add_user(db, "ada")
    with FakeAnthropic(api_key=KEY) as fake:
        fake.enqueue(Reply(json={}, delay=60))
        with serve_claude(db, fake, "--drain-timeout", "1") as (url, proc):
            cid = httpx.post(f"{url}/v1/conversations", json={}, headers=bearer(token)).json()["id"]
            out: list[Any] = []
            t = _send_in_thread(url, token, cid, out)
            while not fake.requests:
                time.sleep(0.01)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            assert time.monotonic() - t0 < 10
            t.join(30)
        assert fake.drops.wait(5)
    store = SQLiteStore(db)
    last = store.load(cid)[-1]
    assert last.role == "assistant" and last.meta["stop_reason"] == "cancelled"
    store.close()


def _message_json(value: str) -> dict[str, Any]:
    return {"id": "msg_x", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
            "content": [{"type": "text", "text": value}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 3}}

