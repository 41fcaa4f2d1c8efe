"""An HTTP client never reads colloquy's internal ids in an error: not another user's
conversation id, not even its own conversation's internal id (the OpenAI-compatible route names
a conversation by the client's ``X-Colloquy-Conversation``, stored under a random id). Its own
words (the name it sent, its idempotency key) may come back.

The library's errors name the id in ``str(error)`` (logs, local users) and leave it out of
``client_message()``, which every error body (JSON and streamed, both routes) and a reply's
notes use.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from colloquy import EchoModel, FunctionModel, MemoryStore
from colloquy.errors import (
    ColloquyError,
    ConflictError,
    ConversationBusy,
    ConversationNotFound,
    IdempotencyKeyReused,
    NoContextRecord,
    OwnerGone,
    brief,
)
from colloquy.server import create_app
from colloquy.server.errors import Redactor, client_message
from colloquy.store import Store
from colloquy.store.users import issue_token
from server_helpers import bearer, parse_sse, serve_in_thread
from test_deletion_wins import Gate

ID = "c_internal0042"


@pytest.mark.parametrize("error", [
    IdempotencyKeyReused(ID, "k-1"),
    ConversationNotFound(ID),
    OwnerGone(f"conversation {ID!r}", ID),
    OwnerGone("user 'u_internal0042'"),
    ConflictError(ID, 7),
    ConversationBusy(ID, 5.0),
    NoContextRecord(ID, 3),
], ids=lambda e: type(e).__name__)
def test_errors_naming_an_internal_id_leave_it_out_of_the_clients_text(
        error: ColloquyError) -> None:
    assert "internal0042" in str(error)  # logs and local users still see which one
    for text in (error.client_message(), client_message(error, Redactor()), brief(error)):
        assert "internal0042" not in text and text.strip(), text
    assert "'k-1'" in IdempotencyKeyReused(ID, "k-1").client_message()  # the client's own key


def test_a_name_the_client_sent_comes_back() -> None:
    error = ConversationNotFound(ID, client_name="my-trip")
    assert error.client_message() == "no conversation with id 'my-trip'"


def internal_ids(store: Store) -> list[str]:
    ids = [c.id for c in store.list_conversations(limit=1000)]
    assert ids and all(i.startswith("c_") for i in ids)
    return ids


def test_the_openai_route_never_shows_the_internal_id_in_a_reused_key_error() -> None:
    store = MemoryStore()
    tokens = {u: issue_token(store, u) for u in ("ann", "bob")}
    client = TestClient(create_app(store=store, model=EchoModel(), environ={}, rate_limit=None))

    def ask(user: str, text: str, stream: bool = False) -> httpx.Response:
        return client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": text}], "stream": stream},
            headers={**bearer(tokens[user]), "X-Colloquy-Conversation": "support",
                     "Idempotency-Key": "k-1"})

    for user in ("ann", "bob"):  # two conversations called "support", two internal ids
        assert ask(user, f"hello from {user}").status_code == 200
    ids = internal_ids(store)
    assert len(ids) == 2
    for stream in (False, True):
        r = ask("bob", "another message", stream=stream)
        assert r.status_code == 422, r.text
        body = r.text
        assert "idempotency_key_reused" in body and "'k-1'" in body
        assert not [i for i in ids if i in body], body


def test_a_conversation_deleted_mid_turn_is_reported_without_its_internal_id() -> None:
    """The turn's reply cannot be stored (ConversationNotFound / OwnerGone from the store,
    raised with the internal id): the client reads the error without it, JSON and stream."""
    store = MemoryStore()
    token = issue_token(store, "ann")
    gate = Gate("the reply")
    app = create_app(store=store, model=FunctionModel(gate), environ={}, rate_limit=None)
    with serve_in_thread(app) as url:
        for stream in (False, True):
            name = f"oa-{stream}".lower()
            headers = {**bearer(token), "X-Colloquy-Conversation": name}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                assert client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "first"}]}).status_code == 200
                (cid,) = [c.id for c in store.list_conversations(limit=100) if c.name == name]
                gate.armed, gate.go = True, threading.Event()
                gate.entered.clear()
                answer: list[httpx.Response] = []
                t = threading.Thread(target=lambda: answer.append(client.post(
                    "/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": "second"}], "stream": stream})))
                t.start()
                assert gate.entered.wait(60)
                assert client.delete(f"/v1/conversations/{name}").status_code == 204
                gate.go.set()
                t.join(60)
                gate.armed = False
                r = answer[0]
                if stream:
                    errors = [json.loads(line[6:]) for line in r.text.splitlines()
                              if line.startswith("data: {") and '"error"' in line]
                    assert errors, r.text
                else:
                    assert r.status_code == 404, r.text
                assert "no longer exists" in r.text or "does not exist" in r.text, r.text
                assert cid not in r.text, r.text


def test_the_native_route_names_a_conversation_as_the_client_does() -> None:
    """A conversation made on the OpenAI route ("support", stored as c_...) is reached by its
    name on the native route too: errors there name it by that name or not at all."""
    store = MemoryStore()
    token = issue_token(store, "ann")
    client = TestClient(create_app(store=store, model=EchoModel(), environ={}, rate_limit=None))
    h = bearer(token)
    assert client.post("/v1/chat/completions", headers={**h, "X-Colloquy-Conversation": "support"},
                       json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    (cid,) = internal_ids(store)
    url = "/v1/conversations/support/messages"
    assert client.post(url, headers=h, json={"content": "one", "idempotency_key": "k"}
                       ).status_code == 200
    for stream in (False, True):
        r = client.post(url, headers=h, json={"content": "two", "idempotency_key": "k",
                                              "stream": stream})
        assert r.status_code == 422 and "this conversation" in r.text, r.text
        assert cid not in r.text
    r = client.get("/v1/conversations/support/messages/1/context", headers=h)  # a user message
    assert r.status_code == 404 and "message 1 has no record" in r.text and cid not in r.text
    r = client.get("/v1/conversations/nope", headers=h)
    assert r.status_code == 404 and r.json()["error"]["message"] == "no conversation with id 'nope'"
