"""Streamed deltas are coalesced where the client cannot see the difference (issue 16): deltas
that are all waiting when the response's writer comes back for more go out as one event, on
the native SSE route and the OpenAI-compatible one; a delta that arrives alone goes out at once,
so no text is ever held back. Through a real uvicorn server and HTTP client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from colloquy import SQLiteStore
from colloquy.messages import TextBlock
from colloquy.models.base import Model, ModelRequest, ModelResponse, StreamEvent, TextDelta
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import bearer, parse_sse, serve_in_thread, texts


class Bursts(Model):
    """Streams its reply in bursts: the deltas of a burst arrive together (as an SDK parses
    several events out of one network read), then ``pause`` seconds pass before the next."""

    name = "bursts"
    provider = "offline"

    def __init__(self, bursts: list[list[str]], pause: float) -> None:
        self.bursts = bursts
        self.pause = pause

    def _response(self) -> ModelResponse:
        text = "".join("".join(b) for b in self.bursts)
        return ModelResponse(content=[TextBlock(text=text)], model=self.name)

    def request(self, request: ModelRequest) -> ModelResponse:
        return self._response()

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        for i, burst in enumerate(self.bursts):
            if i:
                await asyncio.sleep(self.pause)
            for piece in burst:
                yield TextDelta(text=piece)
        yield self._response()


BURSTS = [["Once ", "upon ", "a ", "time"], [", there ", "was ", "a "], ["fox."]]


def _app(tmp_path: Path, model: Model) -> tuple[object, str]:
    store = SQLiteStore(tmp_path / "c.db")
    token = issue_token(store, "ada")
    return create_app(store=store, model=model, environ={}, rate_limit=None), token


def test_deltas_that_arrive_together_go_out_as_one_event(tmp_path: Path) -> None:
    app, token = _app(tmp_path, Bursts(BURSTS, pause=0.3))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(token),
                                                   timeout=30) as client:
        cid = client.post("/v1/conversations", json={}).json()["id"]
        events = parse_sse(client.post(f"/v1/conversations/{cid}/messages",
                                       json={"content": "a story", "stream": True}))
        deltas = [d["text"] for e, d in events if e == "delta"]
        assert deltas == ["".join(b) for b in BURSTS]  # one event per burst, text unchanged
        assert events[-1][0] == "done" and events[-1][1]["text"] == texts(events)

        r = client.post("/v1/chat/completions", headers={"X-Colloquy-Conversation": "oa"},
                        json={"model": "bursts", "stream": True,
                              "messages": [{"role": "user", "content": "a story"}]})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]
        content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert [c for c in content if c] == ["".join(b) for b in BURSTS]


def test_a_delta_that_arrives_alone_is_sent_at_once(tmp_path: Path) -> None:
    """Coalescing never waits for more text: each burst reaches the client before the next
    one exists."""
    pause = 0.5
    app, token = _app(tmp_path, Bursts([["first"], ["second"], ["third"]], pause=pause))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(token),
                                                   timeout=30) as client:
        cid = client.post("/v1/conversations", json={}).json()["id"]
        arrivals: list[tuple[float, str]] = []
        with client.stream("POST", f"/v1/conversations/{cid}/messages",
                           json={"content": "go", "stream": True}) as r:
            event = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "delta":
                    arrivals.append((time.monotonic(), json.loads(line[6:])["text"]))
        assert [t for _, t in arrivals] == ["first", "second", "third"]
        gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
        assert all(g > pause / 2 for g in gaps), gaps
