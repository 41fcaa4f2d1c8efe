"""The HTTP API, in process (FastAPI's TestClient over the real app, a real SQLite store and the
offline models): conversations, turns as JSON and as server-sent events, the exact next request,
auth, cross-user isolation on every route, validation and size limits, the rate limit, the error
table, secrets kept out of responses and logs, and the OpenAPI description."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from colloquy import EchoModel, FunctionModel, ModelRequest, ScriptedModel, SQLiteStore
from colloquy.errors import (
    AuthenticationError,
    BadRequestError,
    ContextTooLongError,
    ModelConnectionError,
    ModelError,
    OverloadedError,
    RateLimitError,
)
from colloquy.server import RateLimit, create_app
from colloquy.server.errors import STATUS, error_flavour, status_for
from colloquy.store.users import hash_token, issue_token
from server_helpers import bearer, parse_sse, texts

SECRET = "sk-ant-api03-THIS-IS-A-SECRET-KEY-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "server.db")
    yield s
    s.close()


class Env:
    """An app over a fresh store with two users, ada and bob."""

    def __init__(self, store: SQLiteStore, model: Any = None, **options: Any) -> None:
        self.store = store
        self.model = model or EchoModel()
        self.ada = issue_token(store, "ada")
        self.bob = issue_token(store, "bob")
        self.app = create_app(store=store, model=self.model, environ={}, **options)
        self.client = TestClient(self.app)

    def as_(self, who: str) -> dict[str, str]:
        return bearer(self.ada if who == "ada" else self.bob)

    def new(self, who: str = "ada", **body: Any) -> str:
        r = self.client.post("/v1/conversations", json=body, headers=self.as_(who))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def say(self, cid: str, text: str, who: str = "ada", **extra: Any) -> Any:
        return self.client.post(f"/v1/conversations/{cid}/messages",
                                json={"content": text, **extra}, headers=self.as_(who))


@pytest.fixture
def env(store: SQLiteStore) -> Env:
    return Env(store, rate_limit=None)


# -- conversations and turns ------------------------------------------------------------------------


def test_conversation_lifecycle(env: Env) -> None:
    cid = env.new(title="Trip", system="You are terse.")
    listed = env.client.get("/v1/conversations", headers=env.as_("ada")).json()["conversations"]
    assert [(c["id"], c["title"], c["system"], c["model"]) for c in listed] == [
        (cid, "Trip", "You are terse.", "echo")]

    r = env.say(cid, "I like tea")
    assert r.status_code == 200
    reply = r.json()
    assert reply["text"] == "echo: received 1 message (~{0} tokens); last user text: 'I like tea'".format(
        reply["usage"]["input_tokens"])
    assert reply["seq"] == 2 and reply["cost_usd"] == 0.0 and reply["usage"]["output_tokens"] > 0
    # The model was sent the persona beside the message, as the library does it.
    assert [b.text for b in env.model.last_request.system] == ["You are terse."]

    detail = env.client.get(f"/v1/conversations/{cid}", headers=env.as_("ada")).json()
    assert [(m["seq"], m["role"], m["text"]) for m in detail["messages"]] == [
        (1, "user", "I like tea"), (2, "assistant", reply["text"])]
    assert detail["messages"][1]["usage"] == reply["usage"]
    assert detail["message_count"] == 2

    r = env.client.patch(f"/v1/conversations/{cid}", json={"title": "Tea"}, headers=env.as_("ada"))
    assert r.status_code == 200 and r.json()["title"] == "Tea"
    assert env.client.delete(f"/v1/conversations/{cid}", headers=env.as_("ada")).status_code == 204
    assert env.client.get(f"/v1/conversations/{cid}", headers=env.as_("ada")).status_code == 404
    assert env.store.find_conversation(cid) is None


@pytest.mark.parametrize("steps,creating,turn", [("threads", 1, 2), ("auto", 0, 0)])
def test_a_json_turn_makes_two_trips_to_the_step_threads(
        store: SQLiteStore, steps: str, creating: int, turn: int) -> None:
    """On threads, the turn's two steps around the model call: the token's user and the
    caller's conversation are resolved in the first of them, not in trips of their own
    (colloquy.server.hot; issue 16: each trip is a hand-over between the event loop and a
    thread, CPU per turn); creating a conversation is one trip, its token included. With
    ``steps="auto"`` on SQLite, none: the steps run on the event loop. Counted on the pool
    itself; the turn's answer, a retry's replay, another user's 404 and a bad token's 401 are
    the same either way."""
    env = Env(store, rate_limit=None, steps=steps)
    service = env.app.state.service
    assert service.inline_steps is (steps == "auto")
    trips = 0
    submit = service.executor.submit

    def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        nonlocal trips
        trips += 1
        return submit(fn, *args, **kwargs)

    service.executor.submit = counted
    cid = env.new()
    assert trips == creating
    trips = 0
    r = env.say(cid, "first", idempotency_key="k-1")
    assert r.status_code == 200 and r.json()["seq"] == 2
    assert trips == turn
    again = env.say(cid, "first", idempotency_key="k-1")
    assert again.json()["seq"] == 2 and again.headers["Idempotent-Replayed"] == "true"
    assert env.say(cid, "hers?", who="bob").status_code == 404
    bad = env.client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"},
                          headers={"Authorization": "Bearer col_nope"})
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    assert bad.json()["error"]["type"] == "unauthenticated"


def test_cached_chats_are_bounded_by_count_and_by_the_messages_they_hold(
        tmp_path: Path) -> None:
    """Chats stay cached between turns (a rebuilt one reloads its log): at most
    ``cached_chats`` of them, and when one is added, the others are dropped (least recently
    used first) while they hold more than ``cached_messages`` messages together. A dropped
    Chat is rebuilt with its whole log on its next turn."""
    for i, options in enumerate(({"cached_chats": 3}, {"cached_chats": 10, "cached_messages": 5})):
        env = Env(SQLiteStore(tmp_path / f"{i}.db"), rate_limit=None, **options)
        service = env.app.state.service
        ids = [env.new() for _ in range(4)]
        for cid in ids:  # 2 messages each; the fourth Chat is over either bound
            assert env.say(cid, "one").status_code == 200
        assert [c.session_id for c in service._chats.values()] == ids[1:], options
        r = env.say(ids[0], "again")  # rebuilt, with its whole log
        assert r.status_code == 200 and r.json()["seq"] == 4
        assert "received 3 messages" in r.json()["text"]


def test_untitled_conversation_takes_its_first_words_as_title(env: Env) -> None:
    cid = env.new()
    env.say(cid, "Plan a   weekend in Lisbon with two kids and a small budget please, thanks")
    title = env.client.get(f"/v1/conversations/{cid}", headers=env.as_("ada")).json()["title"]
    assert title.startswith("Plan a weekend in Lisbon") and len(title) <= 60


def test_streaming_turn_sends_deltas_then_the_reply_with_usage(store: SQLiteStore) -> None:
    # Words 10 ms apart: deltas that arrive together would be sent as one (server.coalesce).
    env = Env(store, model=EchoModel(delay=0.01), rate_limit=None)
    cid = env.new()
    env.say(cid, "first")
    r = env.say(cid, "second", stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r)
    kinds = [e for e, _ in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done" and kinds.count("delta") > 3
    done = events[-1][1]
    assert texts(events) == done["text"]
    assert "received 3 messages" in done["text"] and done["seq"] == 4
    assert done["usage"]["input_tokens"] > 0 and done["cost_usd"] == 0.0
    assert [m.role for m in env.store.load(cid)] == ["user", "assistant"] * 2


def test_streaming_failure_is_an_error_event_and_keeps_the_message(store: SQLiteStore) -> None:
    env = Env(store, ScriptedModel([OverloadedError("busy", provider="x")]), rate_limit=None)
    cid = env.new()
    events = parse_sse(env.say(cid, "hello?", stream=True))
    assert events == [("error", {"error": {"type": "model_overloaded", "message": "busy (x)"}})]
    assert [m.message.text for m in store.load(cid)] == ["hello?"]


def test_context_is_exactly_the_next_request(env: Env) -> None:
    cid = env.new(system="Be brief.")
    env.say(cid, "one")
    env.say(cid, "two")
    r = env.client.get(f"/v1/conversations/{cid}/context", params={"message": "three"},
                       headers=env.as_("ada"))
    assert r.status_code == 200
    predicted = r.json()
    env.say(cid, "three")
    assert predicted["request"] == env.model.last_request.to_anthropic()
    assert predicted["input_tokens"] > 0
    # Without a message: what the policy keeps of the stored log.
    stored = env.client.get(f"/v1/conversations/{cid}/context", headers=env.as_("ada")).json()
    assert len(stored["request"]["messages"]) == 6
    empty = env.new()
    r = env.client.get(f"/v1/conversations/{empty}/context", headers=env.as_("ada"))
    assert r.status_code == 400 and "?message=" in r.json()["error"]["message"]


def test_model_choice_is_limited_to_the_servers_models(env: Env) -> None:
    r = env.client.post("/v1/conversations", json={"model": "gpt-4o"}, headers=env.as_("ada"))
    assert r.status_code == 400 and "not offered by this server" in r.json()["error"]["message"]
    assert env.client.post("/v1/conversations", json={"model": "echo"},
                           headers=env.as_("ada")).status_code == 201


# -- auth and isolation ------------------------------------------------------------------------------


def _routes(app: Any) -> list[tuple[str, str]]:
    return sorted((m, r.path) for r in app.routes if isinstance(r, APIRoute)
                  for m in r.methods if r.include_in_schema)


def test_every_api_route_needs_a_valid_token(env: Env) -> None:
    for method, path in _routes(env.app):
        if not path.startswith("/v1/"):
            continue
        url = path.replace("{conversation_id}", "c_x").replace("{fact_id}", "1").replace(
            "{seq}", "2").replace("{model_id}", "echo")
        # The compatible routes answer in their API's own error shape (server/errors.py).
        kind = {"native": "unauthenticated"}.get(error_flavour(url, {}), "authentication_error")
        for headers in ({}, bearer("cq_not-a-real-token"), {"Authorization": "Basic YWRhOng="},
                        {"x-api-key": "cq_not-a-real-token"}):
            r = env.client.request(method, url, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == kind
    assert env.client.get("/healthz").json()["status"] == "ok"


def _cross_user_calls(cid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """One request per route that names a conversation, made by bob on ada's conversation."""
    return {
        ("GET", "/v1/conversations/{conversation_id}"): {"url": f"/v1/conversations/{cid}"},
        ("PATCH", "/v1/conversations/{conversation_id}"): {
            "url": f"/v1/conversations/{cid}", "json": {"title": "mine now"}},
        ("DELETE", "/v1/conversations/{conversation_id}"): {"url": f"/v1/conversations/{cid}"},
        ("POST", "/v1/conversations/{conversation_id}/messages"): {
            "url": f"/v1/conversations/{cid}/messages", "json": {"content": "hi"}},
        ("GET", "/v1/conversations/{conversation_id}/context"): {
            "url": f"/v1/conversations/{cid}/context"},
        ("POST", "/v1/conversations/{conversation_id}/edit"): {
            "url": f"/v1/conversations/{cid}/edit", "json": {"content": "hi"}},
        ("POST", "/v1/conversations/{conversation_id}/regenerate"): {
            "url": f"/v1/conversations/{cid}/regenerate", "json": {}},
        ("GET", "/v1/conversations/{conversation_id}/messages/{seq}/context"): {
            "url": f"/v1/conversations/{cid}/messages/2/context"},
    }


def test_another_users_conversation_is_404_on_every_route(env: Env) -> None:
    cid = env.new(system="ada's secret persona")
    env.say(cid, "ada's secret plan")
    calls = _cross_user_calls(cid)
    # Every route with a conversation id in its path is in the table above.
    with_id = {(m, p) for m, p in _routes(env.app) if "{conversation_id}" in p}
    assert with_id == set(calls)
    for (method, _), call in calls.items():
        for stream in (False, True):
            body = call.get("json")
            if body is not None and "content" in body:
                body = {**body, "stream": stream}
            r = env.client.request(method, call["url"], json=body, headers=env.as_("bob"))
            assert r.status_code == 404, (method, call, r.text)
            assert r.json() == {"error": {"type": "not_found",
                                          "message": f"no conversation with id '{cid}'"}}
    # The name in a body (the OpenAI endpoint's header, metadata and user field) names a
    # conversation in bob's own namespace: bob gets his own, as for a free name, never ada's.
    for extra, headers in (({}, {"X-Colloquy-Conversation": cid}),
                           ({"metadata": {"conversation_id": cid}}, {}), ({"user": cid}, {})):
        for stream in (False, True):
            r = env.client.post("/v1/chat/completions", headers={**env.as_("bob"), **headers},
                                json={"messages": [{"role": "user", "content": "hi"}],
                                      "stream": stream, **extra})
            assert r.status_code == 200, r.text
            assert "secret" not in r.text and "received 1 message" in r.text + \
                str(env.client.get(f"/v1/conversations/{cid}", headers=env.as_("bob")).json())
    bobs = env.client.get(f"/v1/conversations/{cid}", headers=env.as_("bob")).json()
    assert [m["text"] for m in bobs["messages"] if m["role"] == "user"] == ["hi"] * 6
    assert bobs["system"] == ""  # the server's default persona, not ada's
    # Nothing of ada's changed, and bob's list shows only his own.
    (ada_conv,) = env.store.list_conversations(user_id="ada")
    assert [m.message.text for m in env.store.load(ada_conv.id)] [0] == "ada's secret plan"
    assert len(env.store.load(ada_conv.id)) == 2
    assert ada_conv.title is not None and ada_conv.title != "mine now"
    listed = env.client.get("/v1/conversations", headers=env.as_("bob")).json()["conversations"]
    assert [(c["id"], c["message_count"]) for c in listed] == [(cid, 12)]
    bob_conv = env.store.find_named("bob", cid)
    assert bob_conv is not None and bob_conv.id != ada_conv.id
    # A nonexistent id answers exactly the same way: existence does not leak.
    r = env.client.get("/v1/conversations/c_nope", headers=env.as_("bob"))
    assert r.json()["error"]["message"] == "no conversation with id 'c_nope'"


def test_conversations_from_the_cli_with_the_same_user_id_are_visible(env: Env) -> None:
    env.store.create_conversation(id="cli-1", user_id="ada", model="echo")
    env.store.create_conversation(id="cli-2", user_id=None, model="echo")
    ids = [c["id"] for c in env.client.get("/v1/conversations", headers=env.as_("ada")).json()["conversations"]]
    assert ids == ["cli-1"]
    assert env.client.get("/v1/conversations/cli-2", headers=env.as_("ada")).status_code == 404


def test_only_a_hash_of_the_token_is_stored(env: Env, tmp_path: Path) -> None:
    env.store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("server.db*"))
    assert env.ada.encode() not in raw and hash_token(env.ada).encode() in raw


# -- validation, limits, rate ------------------------------------------------------------------------


@pytest.mark.parametrize("body, where", [
    ({"content": ""}, "body.content"),
    ({}, "body.content"),
    ({"content": "hi", "stream": "yes please"}, "body.stream"),
    ({"content": "hi", "extra": 1}, "body.extra"),
    ({"content": "hi", "idempotency_key": "has spaces"}, "body.idempotency_key"),
    ({"content": 42}, "body.content"),
])
def test_invalid_bodies_get_a_clear_422(env: Env, body: dict[str, Any], where: str) -> None:
    cid = env.new()
    r = env.client.post(f"/v1/conversations/{cid}/messages", json=body, headers=env.as_("ada"))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "invalid_request" and err["message"].startswith(where)


def test_malformed_json_and_blank_messages(env: Env) -> None:
    cid = env.new()
    r = env.client.post(f"/v1/conversations/{cid}/messages", content=b"{not json",
                        headers={**env.as_("ada"), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"
    r = env.say(cid, "   \n ")
    assert r.status_code == 422 and r.json()["error"]["message"] == "the message is empty"
    assert env.store.load(cid) == []


def test_size_limits(store: SQLiteStore) -> None:
    env = Env(store, rate_limit=None, max_message_chars=100, max_body_bytes=2000)
    cid = env.new()
    r = env.say(cid, "x" * 101)
    assert r.status_code == 413 and "limit is 100" in r.json()["error"]["message"]
    r = env.client.post(f"/v1/conversations/{cid}/messages", headers=env.as_("ada"),
                        json={"content": "y" * 5000})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"content": "'
        for _ in range(10):
            yield b"z" * 500
        yield b'"}'

    r = env.client.post(f"/v1/conversations/{cid}/messages", content=chunks(),
                        headers={**env.as_("ada"), "Content-Type": "application/json"})
    assert r.status_code == 413
    assert env.store.load(cid) == []
    assert env.say(cid, "x" * 100).status_code == 200


def test_rate_limit_per_user_with_retry_after(store: SQLiteStore) -> None:
    env = Env(store, rate_limit=RateLimit(requests=3, per=60))
    for _ in range(3):
        assert env.client.get("/v1/conversations", headers=env.as_("ada")).status_code == 200
    r = env.client.get("/v1/conversations", headers=env.as_("ada"))
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 20
    # Bob has his own bucket.
    assert env.client.get("/v1/conversations", headers=env.as_("bob")).status_code == 200


def test_rate_limit_parsing() -> None:
    assert RateLimit.parse("60/minute") == RateLimit(60, 60.0)
    assert RateLimit.parse("5/s") == RateLimit(5, 1.0)
    assert RateLimit.parse("100/30s") == RateLimit(100, 30.0)
    assert RateLimit.parse("off") is None
    with pytest.raises(Exception, match="invalid rate limit"):
        RateLimit.parse("lots")


# -- the error table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("error, status, retry", [
    (RateLimitError("slow down", retry_after=7), 503, "7"),
    (OverloadedError("overloaded"), 503, "1"),
    (ModelConnectionError("timeout"), 504, None),
    (AuthenticationError("bad key", status=401), 502, None),
    (BadRequestError("bad shape", status=400), 502, None),
    (ContextTooLongError("too long"), 422, None),
    (ModelError("boom"), 502, None),
    (RuntimeError("provider SDK bug"), 502, None),
])
def test_model_errors_map_through_the_one_table(
    store: SQLiteStore, error: Exception, status: int, retry: str | None
) -> None:
    env = Env(store, ScriptedModel([error]), rate_limit=None)
    cid = env.new()
    r = env.say(cid, "hi")
    assert r.status_code == status, r.text
    assert r.headers.get("retry-after") == retry
    assert r.json()["error"]["type"] == status_for(
        error if isinstance(error, ModelError) else ModelError(""))[1]
    assert [m.message.text for m in store.load(cid)] == ["hi"]  # the message is kept


def test_the_table_covers_the_whole_exception_tree() -> None:
    import colloquy.errors as errors

    tree = [c for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, errors.ColloquyError)]
    for cls in tree:
        assert any(k in STATUS for k in cls.__mro__), cls
    assert STATUS[errors.ConversationNotFound] == (404, "not_found")


# -- secrets -----------------------------------------------------------------------------------------


def test_api_keys_never_reach_a_response_or_a_log(store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    def leaky(request: ModelRequest) -> str:
        raise AuthenticationError(f"invalid x-api-key {SECRET}", provider="anthropic", status=401)

    app = create_app(store=store, model=FunctionModel(leaky), rate_limit=None,
                     environ={"ANTHROPIC_API_KEY": SECRET})
    client = TestClient(app, raise_server_exceptions=False)
    token = issue_token(store, "carol")
    cid = client.post("/v1/conversations", json={}, headers=bearer(token)).json()["id"]
    caplog.set_level(logging.DEBUG)
    bodies = [
        client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"}, headers=bearer(token)),
        client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": True},
                    headers=bearer(token)),
        client.post("/v1/chat/completions", headers={**bearer(token), "X-Colloquy-Conversation": cid},
                    json={"messages": [{"role": "user", "content": "hi"}]}),
        client.post("/v1/chat/completions", headers={**bearer(token), "X-Colloquy-Conversation": cid},
                    json={"messages": [{"role": "user", "content": "hi"}], "stream": True}),
        client.get("/openapi.json"), client.get("/healthz"), client.get("/"),
    ]
    assert bodies[0].status_code == 502 and "[redacted]" in bodies[0].text
    for r in bodies:
        assert SECRET not in r.text
    assert "[redacted]" in caplog.text and SECRET not in caplog.text


# -- OpenAPI -----------------------------------------------------------------------------------------


def test_openapi_describes_exactly_the_routes_served(env: Env) -> None:
    doc = env.client.get("/openapi.json").json()
    documented = sorted((m.upper(), p) for p, ops in doc["paths"].items() for m in ops)
    assert documented == _routes(env.app)
    # Bodies are described by their schemas, and errors by the common error shape.
    send = doc["paths"]["/v1/conversations/{conversation_id}/messages"]["post"]
    assert "MessageCreate" in json.dumps(send["requestBody"])
    assert {"401", "404", "422", "429"} <= set(send["responses"])
    assert "text/event-stream" in send["responses"]["200"]["content"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_unknown_routes_and_methods_use_the_error_shape(env: Env) -> None:
    r = env.client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = env.client.put("/v1/conversations", headers=env.as_("ada"))
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, POST"  # every method of the path, not the first route's
    assert env.client.options("/v1/me").headers["allow"] == "DELETE, GET"


def test_the_page_is_served_with_a_strict_content_security_policy(env: Env) -> None:
    r = env.client.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert env.client.get("/static/app.js").status_code == 200
    assert env.client.get("/static/style.css").status_code == 200



# -- idempotency -------------------------------------------------------------------------------------


def test_a_retried_request_with_the_same_key_is_answered_once(env: Env) -> None:
    cid = env.new()
    first = env.say(cid, "book the table", idempotency_key="k-1")
    again = env.say(cid, "book the table", idempotency_key="k-1")
    assert first.status_code == again.status_code == 200
    assert again.json()["seq"] == first.json()["seq"] and again.json()["text"] == first.json()["text"]
    assert first.json()["replayed"] is False and again.json()["replayed"] is True
    assert again.headers["idempotent-replayed"] == "true"
    events = parse_sse(env.say(cid, "book the table", idempotency_key="k-1", stream=True))
    assert events[-1][0] == "done" and events[-1][1]["replayed"] is True
    assert len(env.store.load(cid)) == 2 and len(env.model.requests) == 1
    # A new key is a new turn.
    assert env.say(cid, "book the table", idempotency_key="k-2").json()["seq"] == 4


# -- memory (facts) ----------------------------------------------------------------------------------


def test_facts_can_be_listed_added_and_forgotten(env: Env) -> None:
    h = env.as_("ada")
    r = env.client.post("/v1/memory", json={"statement": "prefers metric units", "subject": "units"},
                        headers=h)
    assert r.status_code == 201
    fact = r.json()
    assert (fact["subject"], fact["statement"], fact["origin"]) == ("units", "prefers metric units", "user")
    again = env.client.post("/v1/memory", json={"statement": "Prefers metric units"}, headers=h)
    assert again.json()["id"] == fact["id"]  # the same fact twice is kept once
    assert [f["id"] for f in env.client.get("/v1/memory", headers=h).json()["facts"]] == [fact["id"]]
    assert env.client.post("/v1/memory", json={"statement": ""}, headers=h).status_code == 422
    assert env.client.delete(f"/v1/memory/{fact['id']}", headers=h).status_code == 204
    assert env.client.get("/v1/memory", headers=h).json() == {"facts": []}
    r = env.client.delete(f"/v1/memory/{fact['id']}", headers=h)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_another_users_facts_are_out_of_reach(env: Env) -> None:
    fact = env.client.post("/v1/memory", json={"statement": "ada's secret fact"},
                           headers=env.as_("ada")).json()
    assert env.client.get("/v1/memory", headers=env.as_("bob")).json() == {"facts": []}
    r = env.client.delete(f"/v1/memory/{fact['id']}", headers=env.as_("bob"))
    assert r.status_code == 404 and "secret" not in r.text
    assert r.json() == {"error": {"type": "not_found", "message": f"no fact with id {fact['id']!r}"}}
    assert [f["statement"] for f in env.client.get("/v1/memory", headers=env.as_("ada")).json()["facts"]] \
        == ["ada's secret fact"]


def test_facts_reach_the_model_through_the_memory_policy(store: SQLiteStore) -> None:
    from colloquy.context.presets import make_policy

    env = Env(store, policy=make_policy("memory", chat_model="echo"), rate_limit=None)
    env.client.post("/v1/memory", json={"statement": "is allergic to peanuts", "subject": "health"},
                    headers=env.as_("ada"))
    env.client.post("/v1/memory", json={"statement": "likes jazz"}, headers=env.as_("bob"))
    r = env.client.post("/v1/chat/completions", headers={**env.as_("ada"), "X-Colloquy-Conversation": "m1"},
                        json={"messages": [{"role": "user", "content": "suggest a snack with peanuts"}]})
    assert r.status_code == 200
    sent = json.dumps(env.model.last_request.to_anthropic())
    assert "allergic to peanuts" in sent and "jazz" not in sent


# -- the caller's own data -----------------------------------------------------------------------------


def test_export_holds_the_callers_data_and_nobody_elses(env: Env) -> None:
    ada_conv = env.new(title="ada's")
    env.say(ada_conv, "ada's unique words 7781")
    bob_conv = env.new("bob")
    env.say(bob_conv, "bob's unique words 9923", who="bob")
    env.client.post("/v1/memory", json={"statement": "ada likes rain"}, headers=env.as_("ada"))
    r = env.client.get("/v1/me/export", headers=env.as_("ada"))
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    data = r.json()
    assert data["user_id"] == "ada"
    assert [s["conversation"]["id"] for s in data["sessions"]] == [ada_conv]
    assert "7781" in r.text and "ada likes rain" in r.text
    assert "9923" not in r.text and bob_conv not in r.text and env.ada not in r.text


def test_delete_me_removes_the_callers_data_and_account_only(env: Env) -> None:
    ada_conv = env.new()
    env.say(ada_conv, "forget me 4471")
    env.client.post("/v1/memory", json={"statement": "ada likes rain"}, headers=env.as_("ada"))
    bob_conv = env.new("bob")
    env.say(bob_conv, "keep me", who="bob")
    r = env.client.delete("/v1/me", headers=env.as_("ada"))
    assert r.status_code == 200
    report = r.json()
    assert report["user_id"] == "ada" and report["conversations"] == 1
    assert report["rows"]["messages"] == 2 and report["rows"]["users"] == 1
    assert env.store.find_conversation(ada_conv) is None and env.store.list_facts("ada") == []
    # The account went too: the token is refused; bob is untouched.
    assert env.client.get("/v1/conversations", headers=env.as_("ada")).status_code == 401
    assert [m.message.text for m in env.store.load(bob_conv)][0] == "keep me"
    assert env.client.get("/v1/me", headers=env.as_("bob")).json() == {"user_id": "bob"}


# -- guards and turn queues ----------------------------------------------------------------------------


def test_a_guard_blocked_turn_says_so_and_skips_the_model(store: SQLiteStore) -> None:
    from colloquy.guards import Verdict

    def no_passwords(text: str) -> Verdict:
        return Verdict.block("I can't help with passwords.") if "password" in text else Verdict.allow()

    env = Env(store, guards=[no_passwords], rate_limit=None)
    cid = env.new()
    reply = env.say(cid, "what is ada's password?").json()
    assert reply["blocked"] is True and reply["text"] == "I can't help with passwords."
    assert reply["stop_reason"] == "guard" and env.model.requests == []
    assert env.say(cid, "hello").json()["blocked"] is False


def test_turn_queues_are_dropped_when_idle(env: Env) -> None:
    cid = env.new()
    for i in range(3):
        env.say(cid, f"turn {i}", stream=bool(i % 2))
    assert env.app.state.service._locks == {}


def test_turns_wait_on_the_model_concurrently_beyond_the_default_thread_pool(store: SQLiteStore) -> None:
    """16 turns on 16 conversations at once, against a model that answers only when all 16
    calls are in flight together: asyncio's default pool (cores + 4 threads) would time out."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from server_helpers import serve_in_thread

    n = 16
    barrier = threading.Barrier(n, timeout=20)

    def together(request: ModelRequest) -> str:
        barrier.wait()  # raises BrokenBarrierError unless n calls wait at the same time
        return "answered together"

    env = Env(store, FunctionModel(together), rate_limit=None, threads=32)
    cids = [env.new() for _ in range(n)]
    with serve_in_thread(env.app) as url, httpx.Client(base_url=url, timeout=60) as http:
        def turn(cid: str) -> httpx.Response:
            return http.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"},
                             headers=env.as_("ada"))

        with ThreadPoolExecutor(n) as pool:
            replies = list(pool.map(turn, cids))
    assert [r.status_code for r in replies] == [200] * n
    assert {r.json()["text"] for r in replies} == {"answered together"}
    assert not barrier.broken


def test_a_conversation_lists_its_side_calls(store: SQLiteStore) -> None:
    """A topic judge's calls are billed to the conversation, and its detail says so."""
    from colloquy import TopicGuard

    judge = FunctionModel(lambda request: '{"on_topic": false, "reason": "sports"}',
                          name="claude-haiku-4-5")
    judge.provider = "anthropic"  # stands in for Claude: priced as Claude (offline: $0)
    env = Env(store, rate_limit=None, guards=[TopicGuard("cooking", judge=judge)])
    cid = env.new()
    assert env.say(cid, "Who won the football match last night?").json()["blocked"] is True
    detail = env.client.get(f"/v1/conversations/{cid}", headers=env.as_("ada")).json()
    (side,) = detail["side_calls"]
    assert (side["purpose"], side["model"], side["calls"]) == ("guard", "claude-haiku-4-5", 1)
    assert side["usage"]["input_tokens"] > 0 and side["cost_usd"] > 0


def test_the_service_keeps_a_conversations_chat_and_reads_only_what_is_new(env: Env) -> None:
    """Turns reuse the conversation's Chat (a new one per request would reload the whole log
    each turn); what another process appends is still seen, and a deletion drops it."""
    from colloquy.messages import Message
    from colloquy.store import NewMessage

    service = env.app.state.service
    cid = env.new()
    env.say(cid, "first")
    cached = service._chats[cid]
    env.say(cid, "second")
    assert service._chats[cid] is cached
    # Another process appends a turn to the same conversation.
    env.store.append(cid, [NewMessage(message=Message.user("from another device")),
                           NewMessage(message=Message.assistant("noted"))])
    env.say(cid, "third")
    texts = [m.text for m in env.model.last_request.messages]
    assert texts[-3:] == ["from another device", "noted", "third"]
    log = [sm.message.text for sm in cached.history()]
    assert log[-4:-1] == ["from another device", "noted", "third"] and len(log) == 8
    assert env.client.delete(f"/v1/conversations/{cid}", headers=env.as_("ada")).status_code == 204
    assert cid not in service._chats


def test_a_requests_sampling_options_apply_to_its_own_turn_only(env: Env) -> None:
    def ask(**extra: Any) -> None:
        r = env.client.post("/v1/chat/completions", headers={
            **env.as_("ada"), "X-Colloquy-Conversation": "opts"},
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra})
        assert r.status_code == 200, r.text

    ask(temperature=0.3, max_tokens=77)
    assert (env.model.last_request.temperature, env.model.last_request.max_tokens) == (0.3, 77)
    ask()
    assert env.model.last_request.temperature is None
    assert env.model.last_request.max_tokens == 1024  # the server's default again
