"""The hot routes (colloquy.server.hot) answer exactly as the FastAPI routes they shortcut.

Every case is sent twice: to an app with the hot routes (the default) and to one without them
(``hot_routes=False``: every request through its FastAPI route), each over a store of its own
with the same users and history. The two answers must agree: status, body (the random
conversation name and the timestamps masked) and every header but ``date`` and
``content-length`` (``Retry-After``, ``WWW-Authenticate``, ``Idempotent-Replayed``, ``Allow``,
the content type, the security headers). The cases cover what the FastAPI route handles:
authentication, malformed, too large and too deep bodies, idempotency keys and their replay,
back-pressure, the rate limit, guards, streaming, and the order in which a request failing
several checks is refused. The cases the hot route answers itself are checked to have been
answered by it (one trip to the step threads fewer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import Response

from colloquy import EchoModel, SQLiteStore
from colloquy.guards import Verdict
from colloquy.server import RateLimit, create_app
from colloquy.server.hot import HotRoute, Serve
from colloquy.store.users import issue_token

MAX_CHARS = 100
MAX_BODY = 4096


def no_passwords(text: str) -> Verdict:
    return Verdict.block("I can't help with passwords.") if "password" in text else Verdict.allow()


class Side:
    """One app (hot routes on or off) over its own store with users ada and bob, and a
    conversation of ada's with one turn already."""

    def __init__(self, path: Path, hot: bool, options: dict[str, Any]) -> None:
        self.store = SQLiteStore(path)
        self.ada = issue_token(self.store, "ada")
        self.bob = issue_token(self.store, "bob")
        self.app = create_app(store=self.store, model=EchoModel(), environ={}, hot_routes=hot,
                              **{"rate_limit": None, "max_message_chars": MAX_CHARS,
                                 "max_body_bytes": MAX_BODY, "guards": [no_passwords],
                                 **options})
        self.client = TestClient(self.app, raise_server_exceptions=False)
        self.service = self.app.state.service
        #: Requests a hot route answered itself (rather than handing them to FastAPI's).
        self.answered = 0
        for route in self.app.routes:
            if isinstance(route, HotRoute):
                route.serve = self._counted(route.serve)
        self.cid = self.client.post("/v1/conversations", json={}, headers=self.auth()).json()["id"]
        self.bobs = self.client.post("/v1/conversations", json={},
                                     headers=self.auth("bob")).json()["id"]
        first = self.turn(json={"content": "first", "idempotency_key": "k-first"})
        assert first.status_code == 200, first.text

    def _counted(self, serve: Serve) -> Serve:
        async def counted(request: Request, token: str, body: Any) -> Response | None:
            try:
                response = await serve(request, token, body)
            except Exception:
                self.answered += 1  # (the app's handlers answer it)
                raise
            self.answered += response is not None
            return response
        return counted

    def auth(self, who: str = "ada") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ada if who == 'ada' else self.bob}"}

    def turn(self, path: str | None = None, *, auth: dict[str, str] | None = None,
             **kw: Any) -> httpx.Response:
        """A POST to the turn route of ada's conversation (or ``path``), as ada (or ``auth``)."""
        url = path or f"/v1/conversations/{self.cid}/messages"
        return self.client.post(url, headers={**(self.auth() if auth is None else auth),
                                              **kw.pop("headers", {})}, **kw)

    def close(self) -> None:
        self.client.close()
        self.store.close()


@dataclass
class Case:
    name: str
    send: Callable[[Side], httpx.Response]
    status: int
    options: dict[str, Any] = field(default_factory=dict)
    #: Answered by the hot route itself (else handed on to the FastAPI route).
    hot: bool = False


BAD = {"Authorization": "Bearer col_nope"}
JSON = {"Content-Type": "application/json"}


def raw(body: bytes | str, **headers: str) -> dict[str, Any]:
    return {"content": body, "headers": {**JSON, **headers}}


def full(side: Side) -> Any:
    """Take every place among the turns in flight (max_inflight=1) as a turn would."""
    return side.service.inflight.admit()


def chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 1000):
        yield body[i:i + 1000]


def occupied(send: Callable[[Side], httpx.Response]) -> Callable[[Side], httpx.Response]:
    def run(side: Side) -> httpx.Response:
        with full(side):
            return send(side)
    return run


def twice(send: Callable[[Side], httpx.Response]) -> Callable[[Side], httpx.Response]:
    """The request sent twice; the second answer (a replay, a rate limit)."""
    def run(side: Side) -> httpx.Response:
        send(side)
        return send(side)
    return run


DEEP = b'{"content": "hi", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}"
DEEPER = b"[" * 2000 + b"]" * 2000
DEEPISH = b'{"content": "hi", "x": ' + b"[" * 300 + b"]" * 300 + b"}"

TURN_CASES = [
    Case("a turn", lambda s: s.turn(json={"content": "hello"}), 200, hot=True),
    Case("a turn, x-api-key", lambda s: s.turn(auth={"x-api-key": s.ada},
                                                json={"content": "hello"}), 200, hot=True),
    Case("a turn, JSON with a charset", lambda s: s.turn(**raw(
        '{"content": "héllo"}'.encode(), **{"Content-Type": "application/json; charset=utf-8"})),
        200, hot=True),
    Case("a turn, thinking 0", lambda s: s.turn(json={"content": "hi", "thinking": 0}), 200,
         hot=True),
    Case("text rules: a lone surrogate", lambda s: s.turn(**raw(b'{"content": "a\\ud83d"}')),
         200, hot=True),
    Case("no token", lambda s: s.turn(auth={}, json={"content": "hi"}), 401),
    Case("a bad token", lambda s: s.turn(auth=BAD, json={"content": "hi"}), 401, hot=True),
    Case("Basic auth", lambda s: s.turn(auth={"Authorization": "Basic YTpi"},
                                        json={"content": "hi"}), 401),
    Case("a bad token, an invalid body", lambda s: s.turn(auth=BAD, json={}), 401),
    Case("a bad token, a blank message", lambda s: s.turn(auth=BAD, json={"content": "  "}), 401,
         hot=True),
    Case("a bad token, a message over the limit",
         lambda s: s.turn(auth=BAD, json={"content": "x" * (MAX_CHARS + 1)}), 401, hot=True),
    Case("no token, malformed JSON", lambda s: s.turn(auth={}, **raw(b'{"content": ')), 422),
    Case("malformed JSON", lambda s: s.turn(**raw(b'{"content": ')), 422),
    Case("not UTF-8", lambda s: s.turn(**raw(b'{"content": "\xff\xfe"}')), 400),
    Case("no content type", lambda s: s.turn(content=b'{"content": "hi"}'), 422),
    Case("text/plain", lambda s: s.turn(**raw(b'{"content": "hi"}', **{
        "Content-Type": "text/plain"})), 422),
    Case("a JSON list", lambda s: s.turn(json=[{"content": "hi"}]), 422),
    Case("JSON null", lambda s: s.turn(**raw(b"null")), 422),
    Case("an empty body", lambda s: s.turn(**raw(b"")), 422),
    Case("an unknown field", lambda s: s.turn(json={"content": "hi", "x": 1}), 422),
    Case("no content", lambda s: s.turn(json={"stream": False}), 422),
    Case("stream as a string", lambda s: s.turn(json={"content": "hi", "stream": "true"}), 422),
    Case("a thinking budget too small", lambda s: s.turn(json={"content": "hi", "thinking": 5}),
         422),
    Case("a blank message", lambda s: s.turn(json={"content": "   "}), 422, hot=True),
    Case("a message over max_message_chars",
         lambda s: s.turn(json={"content": "x" * (MAX_CHARS + 1)}), 413, hot=True),
    Case("a body over max_body_bytes", lambda s: s.turn(json={"content": "x" * MAX_BODY}), 413),
    Case("a chunked body over max_body_bytes", lambda s: s.turn(
        content=chunks(json.dumps({"content": "x" * MAX_BODY}).encode()), headers=JSON), 413),
    Case("nesting over the body's limit", lambda s: s.turn(**raw(DEEPISH)), 422),
    Case("nesting too deep in a field", lambda s: s.turn(**raw(DEEP)), 400),
    Case("nesting too deep for the parser", lambda s: s.turn(**raw(DEEPER)), 400),
    Case("another user's conversation",
         lambda s: s.turn(f"/v1/conversations/{s.bobs}/messages", json={"content": "hi"}), 404,
         hot=True),
    Case("no such conversation", lambda s: s.turn("/v1/conversations/nope/messages",
                                                  json={"content": "hi"}), 404, hot=True),
    Case("a name with a NUL", lambda s: s.turn("/v1/conversations/a%00b/messages",
                                               json={"content": "hi"}), 404, hot=True),
    Case("a trailing slash (redirected)", lambda s: s.turn(f"/v1/conversations/{s.cid}/messages/",
                                              json={"content": "hi"}), 200, hot=True),
    Case("GET on the turn route", lambda s: s.client.get(
        f"/v1/conversations/{s.cid}/messages", headers=s.auth()), 405),
    Case("a key in the body", lambda s: s.turn(json={"content": "hi", "idempotency_key": "k1"}),
         200, hot=True),
    Case("a key in the header", lambda s: s.turn(json={"content": "hi"},
                                                 headers={"Idempotency-Key": "k1"}), 200, hot=True),
    Case("the same key in both", lambda s: s.turn(json={"content": "hi", "idempotency_key": "k1"},
                                                  headers={"Idempotency-Key": "k1"}), 200, hot=True),
    Case("a replayed key (body)", lambda s: s.turn(json={"content": "first",
                                                         "idempotency_key": "k-first"}), 200,
         hot=True),
    Case("a replayed key (header)", twice(lambda s: s.turn(
        json={"content": "again"}, headers={"Idempotency-Key": "k-h"})), 200, hot=True),
    Case("a key reused with another message", lambda s: s.turn(
        json={"content": "other", "idempotency_key": "k-first"}), 422, hot=True),
    Case("two different keys", lambda s: s.turn(json={"content": "hi", "idempotency_key": "k1"},
                                                headers={"Idempotency-Key": "k2"}), 400),
    Case("a key with a space", lambda s: s.turn(json={"content": "hi"},
                                                headers={"Idempotency-Key": "a b"}), 422),
    Case("a key too long", lambda s: s.turn(json={"content": "hi"},
                                            headers={"Idempotency-Key": "k" * 129}), 422),
    Case("a body key too long", lambda s: s.turn(json={"content": "hi",
                                                       "idempotency_key": "k" * 129}), 422),
    Case("an empty key header", lambda s: s.turn(json={"content": "hi"},
                                                 headers={"Idempotency-Key": ""}), 422),
    Case("a guard blocks", lambda s: s.turn(json={"content": "my password?"}), 200, hot=True),
    Case("a stream", lambda s: s.turn(json={"content": "hello", "stream": True}), 200),
    Case("a replayed stream", lambda s: s.turn(json={"content": "first", "stream": True,
                                                     "idempotency_key": "k-first"}), 200),
    Case("a guard blocks a stream",
         lambda s: s.turn(json={"content": "password", "stream": True}), 200),
    Case("back-pressure", occupied(lambda s: s.turn(json={"content": "hi"})), 503,
         {"max_inflight": 1}),
    Case("back-pressure, a stream", occupied(lambda s: s.turn(
        json={"content": "hi", "stream": True})), 503, {"max_inflight": 1}),
    Case("back-pressure, a bad token", occupied(lambda s: s.turn(
        auth=BAD, json={"content": "hi"})), 401, {"max_inflight": 1}),
    Case("back-pressure, another user's conversation", occupied(lambda s: s.turn(
        f"/v1/conversations/{s.bobs}/messages", json={"content": "hi"})), 503,
        {"max_inflight": 1}),
    Case("the rate limit", twice(lambda s: s.turn(json={"content": "hi"})), 429,
         {"rate_limit": RateLimit(requests=3, per=60.0)}, hot=True),
    Case("the rate limit, back-pressure", occupied(twice(lambda s: s.turn(
        json={"content": "hi"}))), 429, {"rate_limit": RateLimit(requests=3, per=60.0),
                                         "max_inflight": 1}),
    Case("the rate limit, a message over the limit", twice(lambda s: s.turn(
        json={"content": "x" * (MAX_CHARS + 1)})), 429,
        {"rate_limit": RateLimit(requests=3, per=60.0)}, hot=True),
]

CREATE = "/v1/conversations"
CREATE_CASES = [
    Case("create", lambda s: s.turn(CREATE, json={}), 201, hot=True),
    Case("create with a title, a persona, the model",
         lambda s: s.turn(CREATE, json={"title": "Trip", "system": "terse", "model": "echo"}),
         201, hot=True),
    Case("create, a model not offered", lambda s: s.turn(CREATE, json={"model": "gpt-x"}), 400,
         hot=True),
    Case("create, no token", lambda s: s.turn(CREATE, auth={}, json={}), 401),
    Case("create, a bad token", lambda s: s.turn(CREATE, auth=BAD, json={}), 401, hot=True),
    Case("create, a bad token, a model not offered",
         lambda s: s.turn(CREATE, auth=BAD, json={"model": "gpt-x"}), 401, hot=True),
    Case("create, malformed JSON", lambda s: s.turn(CREATE, **raw(b"{")), 422),
    Case("create, no body", lambda s: s.turn(CREATE, headers=JSON), 422),
    Case("create, an unknown field", lambda s: s.turn(CREATE, json={"name": "x"}), 422),
    Case("create, a title too long", lambda s: s.turn(CREATE, json={"title": "t" * 201}), 422),
    Case("create, a body over max_body_bytes",
         lambda s: s.turn(CREATE, json={"system": "x" * MAX_BODY}), 413),
    Case("create, nesting too deep", lambda s: s.turn(CREATE, **raw(DEEPER)), 400),
    Case("create, the rate limit", twice(lambda s: s.turn(CREATE, json={})), 429,
         {"rate_limit": RateLimit(requests=3, per=60.0)}, hot=True),
    Case("create, GET lists", lambda s: s.client.get(CREATE, headers=s.auth()), 200),
]

_TIMES = re.compile(rb'"(created_at|updated_at)":\s*[0-9.e+-]+')
_WAIT = re.compile(rb"retry in [0-9.]+s")


def answer(side: Side, response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """What a client sees, with what differs between two stores masked."""
    body = _WAIT.sub(b"retry in Ns", _TIMES.sub(rb'"\1":0', response.content))
    # Conversation names are random: the caller's, bob's and any created by the case.
    names = {side.cid, side.bobs, *(c.name for c in side.store.list_conversations(limit=100))}
    for name in names:
        body = body.replace(name.encode(), b"<name>")
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "content-length")}
    if "retry-after" in headers:  # the rate limit's: seconds until a request is allowed again
        headers["retry-after"] = "N" if response.status_code == 429 else headers["retry-after"]
    return response.status_code, headers, body


@pytest.mark.parametrize("case", TURN_CASES + CREATE_CASES, ids=lambda c: c.name)
def test_the_hot_routes_answer_as_the_fastapi_routes(case: Case, tmp_path: Path) -> None:
    hot, plain = (Side(tmp_path / f"{n}.db", n == "hot", case.options) for n in ("hot", "plain"))
    try:
        hot.answered = 0
        got, want = case.send(hot), case.send(plain)
        assert want.status_code == case.status, want.text
        assert answer(hot, got) == answer(plain, want)
        assert bool(hot.answered) is case.hot  # (the hot route's own answer, or FastAPI's)
    finally:
        hot.close()
        plain.close()


def test_the_fastapi_routes_alone_when_the_hot_routes_are_off(tmp_path: Path) -> None:
    """hot_routes=False leaves the FastAPI routes only; the OpenAPI description is the same."""
    hot, plain = (Side(tmp_path / f"{n}.db", n == "hot", {}) for n in ("hot", "plain"))
    try:
        assert [isinstance(r, HotRoute) for r in hot.app.routes[:2]] == [True, True]
        assert not any(isinstance(r, HotRoute) for r in plain.app.routes)
        assert hot.client.get("/openapi.json").json() == plain.client.get("/openapi.json").json()
    finally:
        hot.close()
        plain.close()
