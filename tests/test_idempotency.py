"""An idempotency key reused with a *different* message is refused (IdempotencyKeyReused; 422
over HTTP), never answered with the first message's reply, and stores nothing: in the library
on every store, on the native route (JSON, stream, body field and Idempotency-Key header) and on
the OpenAI-compatible route (the official SDK as client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from colloquy import (
    Chat,
    EchoModel,
    IdempotencyKeyReused,
    ImageBlock,
    ModelError,
    PIIRedactor,
    ScriptedModel,
    SQLiteStore,
    Store,
    TextBlock,
)
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import bearer, parse_sse, serve_in_thread


# -- the library, on every store --------------------------------------------------------------------


def test_a_key_reused_with_another_message_is_refused_and_stores_nothing(store: Store) -> None:
    model = EchoModel()
    chat = Chat(model, store=store, session_id="c_k")
    first = chat.send("book the table for 8", idempotency_key="req-1")
    for other in ("book the table for 9", "book the table for 8 ", [TextBlock(text="x")]):
        with pytest.raises(IdempotencyKeyReused, match="req-1.*different message"):
            chat.send(other, idempotency_key="req-1")
        with pytest.raises(IdempotencyKeyReused):
            list(Chat(model, store=store, session_id="c_k").stream(other, idempotency_key="req-1"))
    assert len(store.load("c_k")) == 2 and len(model.requests) == 1
    # The same message with the same key is still the faithful retry it was.
    again = Chat(model, store=store, session_id="c_k").send("book the table for 8",
                                                           idempotency_key="req-1")
    assert again.seq == first.seq and any(n.startswith("replayed") for n in again.notes)
    # The key is per conversation: another conversation may use it for anything.
    assert Chat(model, store=store, session_id="c_other").send(
        "something else", idempotency_key="req-1").seq == 2


def test_a_retry_of_an_unanswered_message_must_repeat_it(store: Store) -> None:
    flaky = ScriptedModel([RuntimeError("network down"), "the answer"])
    chat = Chat(flaky, store=store, session_id="c_flaky")
    with pytest.raises(ModelError, match="network down"):
        chat.send("what is 2+2?", idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        chat.send("what is 3+3?", idempotency_key="k")
    assert chat.send("what is 2+2?", idempotency_key="k").text == "the answer"
    assert [sm.message.text for sm in store.load("c_flaky")] == ["what is 2+2?", "the answer"]


def test_a_guard_that_rewrites_the_stored_message_does_not_break_a_faithful_retry(
        store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="c_pii", guards=[PIIRedactor()])
    text = "mail me at ann@example.com"
    first = chat.send(text, idempotency_key="k")
    assert "ann@example.com" not in store.load("c_pii")[0].message.text  # stored redacted
    assert chat.send(text, idempotency_key="k").seq == first.seq
    with pytest.raises(IdempotencyKeyReused):
        chat.send("mail me at bob@example.com", idempotency_key="k")


def test_the_fingerprint_covers_every_block(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="c_img")
    png = "iVBORw0KGgo="
    blocks = [TextBlock(text="what is this?"),
              ImageBlock(source={"type": "base64", "media_type": "image/png", "data": png})]
    chat.send(blocks, idempotency_key="k")
    other = [blocks[0], ImageBlock(source={"type": "base64", "media_type": "image/png",
                                           "data": "R0lGODlh"})]
    with pytest.raises(IdempotencyKeyReused):
        chat.send(other, idempotency_key="k")
    assert chat.check_idempotency_key(blocks, "k") is None
    assert chat.idempotency_key_answered(blocks, "k") is True  # a turn would replay
    assert chat.idempotency_key_answered(blocks, "new") is False
    with pytest.raises(IdempotencyKeyReused):
        chat.idempotency_key_answered(other, "k")


# -- the native route -------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[TestClient, SQLiteStore, str, EchoModel]]:
    store = SQLiteStore(tmp_path / "s.db")
    model = EchoModel()
    token = issue_token(store, "ada")
    yield TestClient(create_app(store=store, model=model, environ={}, rate_limit=None)), \
        store, token, model
    store.close()


def test_the_native_route_answers_422_for_a_reused_key_in_json_stream_and_header(
        site: tuple[TestClient, SQLiteStore, str, EchoModel]) -> None:
    client, store, token, model = site
    h = bearer(token)
    cid = client.post("/v1/conversations", json={}, headers=h).json()["id"]
    url = f"/v1/conversations/{cid}/messages"
    assert client.post(url, json={"content": "first", "idempotency_key": "k-1"},
                       headers=h).status_code == 200
    for body, headers in (
        ({"content": "second", "idempotency_key": "k-1"}, h),
        ({"content": "second", "idempotency_key": "k-1", "stream": True}, h),
        ({"content": "second"}, {**h, "Idempotency-Key": "k-1"}),
        ({"content": "second", "stream": True}, {**h, "Idempotency-Key": "k-1"}),
    ):
        r = client.post(url, json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
        error = r.json()["error"]
        assert error["type"] == "idempotency_key_reused"
        assert "'k-1'" in error["message"] and "different message" in error["message"]
    # The header is a key like the body's: the same message replays.
    r = client.post(url, json={"content": "first"}, headers={**h, "Idempotency-Key": "k-1"})
    assert r.status_code == 200 and r.json()["replayed"] is True
    assert r.headers["idempotent-replayed"] == "true"
    r = client.post(url, json={"content": "first", "stream": True},
                    headers={**h, "Idempotency-Key": "k-1"})
    events = parse_sse(r)
    assert events[-1][0] == "done" and events[-1][1]["replayed"] is True
    assert r.headers["idempotent-replayed"] == "true"  # known before the stream starts
    r = client.post(url, json={"content": "a new one", "stream": True, "idempotency_key": "k-2"},
                    headers=h)
    assert parse_sse(r)[-1][1]["replayed"] is False and "idempotent-replayed" not in r.headers
    # Two different keys in one request are refused.
    r = client.post(url, json={"content": "x", "idempotency_key": "a"},
                    headers={**h, "Idempotency-Key": "b"})
    assert r.status_code == 400 and "differ" in r.json()["error"]["message"]
    assert [sm.message.text for sm in store.load(cid)][0] == "first"
    assert len(store.load(cid)) == 4 and len(model.requests) == 2  # "first", "a new one"


# -- the OpenAI-compatible route (the official SDK) ------------------------------------------------


def test_the_openai_route_takes_an_idempotency_key_header(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "oa.db")
    model = EchoModel()
    token = issue_token(store, "ada")
    app = create_app(store=store, model=model, environ={}, rate_limit=None)
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)

        def ask(text: str, key: str, stream: bool = False) -> Any:
            return client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": text}], stream=stream,
                extra_headers={"X-Colloquy-Conversation": "support-1", "Idempotency-Key": key})

        first = ask("my order is late", "m-1")
        again = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "my order is late"}],
            extra_headers={"X-Colloquy-Conversation": "support-1", "Idempotency-Key": "m-1"})
        assert again.headers["idempotent-replayed"] == "true"
        assert again.parse().choices[0].message.content == first.choices[0].message.content
        for stream in (False, True):
            with pytest.raises(openai.UnprocessableEntityError) as e:
                ask("cancel it", "m-1", stream=stream)
            assert e.value.status_code == 422 and "different message" in str(e.value)
        assert len(model.requests) == 1
    store.close()


# -- every turn route: one key, one request ----------------------------------------------------------

OPENAI, ANTHROPIC, NATIVE = "/v1/chat/completions", "/v1/messages", "native"


def _turn(http: httpx.Client, route: str, name: str, text: str, key: str,
          stream: bool = False) -> httpx.Response:
    """One turn on ``route`` in conversation ``name``, read whole (a stream's events too)."""
    if route == NATIVE:
        return http.post(f"/v1/conversations/{name}/messages",
                         json={"content": text, "stream": stream}, headers={"Idempotency-Key": key})
    body: dict[str, Any] = {"model": "echo", "stream": stream,
                            "messages": [{"role": "user", "content": text}]}
    if route == ANTHROPIC:
        body["max_tokens"] = 100
    return http.post(route, json=body, headers={"Idempotency-Key": key,
                                                "X-Colloquy-Conversation": name})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, SQLiteStore, EchoModel]]:
    store = SQLiteStore(tmp_path / "r.db")
    model = EchoModel()
    token = issue_token(store, "ada")
    with serve_in_thread(create_app(store=store, model=model, environ={}, rate_limit=None)) as url, \
            httpx.Client(base_url=url, headers=bearer(token), timeout=30) as http:
        yield http, store, model
    store.close()


@pytest.mark.parametrize("route", [OPENAI, ANTHROPIC, NATIVE])
@pytest.mark.parametrize("stream", [False, True])
def test_a_replay_says_so_in_its_headers_on_every_route_streamed_or_not(
        served: tuple[httpx.Client, SQLiteStore, EchoModel], route: str, stream: bool) -> None:
    http, store, model = served
    name = http.post("/v1/conversations", json={}).json()["id"]
    first = _turn(http, route, name, "my order is late", "r-1", stream)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = _turn(http, route, name, "my order is late", "r-1", stream)
    assert again.status_code == 200, again.text
    assert again.headers.get("idempotent-replayed") == "true", (route, stream)
    assert "my order is late" in again.text  # the stored reply, replayed
    assert len(model.requests) == 1 and len(store.load(name)) == 2


@pytest.mark.parametrize(("before", "after"), [
    (NATIVE, OPENAI), (OPENAI, NATIVE), (NATIVE, ANTHROPIC), (ANTHROPIC, NATIVE),
    (OPENAI, ANTHROPIC), (ANTHROPIC, OPENAI)])
@pytest.mark.parametrize("stream", [False, True])
def test_a_key_reused_on_another_route_is_refused_like_another_message(
        served: tuple[httpx.Client, SQLiteStore, EchoModel], before: str, after: str,
        stream: bool) -> None:
    # the same content, the same named conversation, the same key: two different operations
    http, store, model = served
    name = http.post("/v1/conversations", json={}).json()["id"]
    assert _turn(http, before, name, "cancel my order", "x-1").status_code == 200
    r = _turn(http, after, name, "cancel my order", "x-1", stream)
    assert r.status_code == 422, r.text
    assert "idempotency key 'x-1' was already used" in r.text  # each API's error shape
    assert len(model.requests) == 1 and len(store.load(name)) == 2, "nothing stored"
    # the first route's retry is still a replay
    assert _turn(http, before, name, "cancel my order", "x-1").headers[
        "idempotent-replayed"] == "true"


def test_the_library_and_the_native_route_are_one_operation(store: Store) -> None:
    # a key sent by the library is answered by the native route's retry, and the reverse
    # (both are colloquy's own send); a compatible API's send of it is refused
    from colloquy.turn_options import OPENAI_API

    chat = Chat(EchoModel(), store=store, session_id="c_ops")
    chat.send("hello", idempotency_key="lib-1")
    assert chat.idempotency_key_answered("hello", "lib-1") is True
    with pytest.raises(IdempotencyKeyReused):
        chat.check_idempotency_key("hello", "lib-1", api=OPENAI_API)
    with pytest.raises(IdempotencyKeyReused):
        chat.idempotency_key_answered("hello", "lib-1", api=OPENAI_API)


@pytest.mark.parametrize("route", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize("stream", [False, True])
def test_a_retry_in_a_conversation_the_client_names_none_is_answered_once(
        served: tuple[httpx.Client, SQLiteStore, EchoModel], route: str, stream: bool) -> None:
    # A client that replays its history and names no conversation (the replayed history finds
    # it): a retried request is the same request, in the same conversation, answered once.
    http, store, model = served
    body: dict[str, Any] = {"model": "echo", "max_tokens": 100, "stream": stream,
                            "messages": [{"role": "user", "content": "plan my trip"}]}

    def send(key: str) -> httpx.Response:
        r = http.post(route, json=body, headers={"Idempotency-Key": key})
        assert r.status_code == 200, r.text
        return r

    first = send("u-1")
    again = send("u-1")  # the first turn, retried
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.headers["x-colloquy-conversation"] == again.headers["x-colloquy-conversation"]
    assert len(model.requests) == 1
    # a later turn (its history holds the first reply), retried
    conv = store.find_named("ada", first.headers["x-colloquy-conversation"])
    assert conv is not None
    answer = store.load(conv.id)[-1].message.text  # what the client got back
    body["messages"] += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": "by train"}]
    second = send("u-2")
    retried = send("u-2")
    assert retried.headers.get("idempotent-replayed") == "true"
    assert retried.headers["x-colloquy-conversation"] == \
        second.headers["x-colloquy-conversation"] == first.headers["x-colloquy-conversation"]
    assert len(model.requests) == 2
    assert len(store.list_conversations(user_id="ada")) == 1


@pytest.mark.parametrize("route", [OPENAI, ANTHROPIC])
def test_chats_that_start_alike_are_told_apart_without_loading_their_logs(
        store: Store, route: str) -> None:
    """attack7 F4: a client that names no conversation and starts each chat with the same
    message gets replay-<hash>, -2, -3...; each request looked for its idempotency key (and its
    last reply) in every one of them through a Chat of each (its whole log loaded and kept in
    the service's cache), so a request cost more with every such chat (28 ms at 10, 182 ms at
    300). Now by indexed reads of the store: no other chat's Chat, and a retry still finds its
    own. Every store."""
    model = EchoModel()
    app = create_app(store=store, model=model, environ={}, rate_limit=None)
    service = app.state.service
    http = TestClient(app, headers=bearer(issue_token(store, "ada")))  # type: ignore[arg-type]
    body: dict[str, Any] = {"model": "echo", "max_tokens": 100,
                            "messages": [{"role": "user", "content": "start"}]}
    names = [http.post(route, json=body, headers={"Idempotency-Key": f"s-{i}"})
             .headers["x-colloquy-conversation"] for i in range(6)]
    assert len(set(names)) == 6
    opened: list[str] = []
    chat = service.chat

    def counted(user: Any, name: str) -> Any:
        opened.append(name)
        return chat(user, name)

    service.chat = counted
    new = http.post(route, json=body, headers={"Idempotency-Key": "s-6"})
    assert new.headers["x-colloquy-conversation"] not in names
    assert opened == [new.headers["x-colloquy-conversation"]], "other chats were opened"
    retried = http.post(route, json=body, headers={"Idempotency-Key": "s-3"})
    assert retried.headers.get("idempotent-replayed") == "true"
    assert retried.headers["x-colloquy-conversation"] == names[3]
    assert len(model.requests) == 7
    # A later turn of one of them continues it (found by its last reply, read from the tail).
    conv = store.find_named("ada", names[2])
    assert conv is not None
    answer = store.load(conv.id)[-1].message.text
    body["messages"] += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": "and then?"}]
    later = http.post(route, json=body, headers={"Idempotency-Key": "s-7"})
    assert later.headers["x-colloquy-conversation"] in names
