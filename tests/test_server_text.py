"""The text rules on every HTTP route, over every store: JSON bodies whose escapes decode to lone
surrogates or NUL, and query and path parameters holding %00, are stored clean (U+FFFD) and never
answer 500; blank content is refused with one 422 everywhere; whatever was stored exports as
UTF-8 JSON. The OpenAI-compatible route is driven by the official ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from colloquy import EchoModel
from colloquy.server import create_app
from colloquy.store import Store
from colloquy.store.users import issue_token
from conftest import make_store
from pg_helpers import postgres_kinds
from server_helpers import bearer, parse_sse, serve_in_thread

FFFD = "\ufffd"
JSON = {"Content-Type": "application/json"}


class Api:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.model = EchoModel()
        self.token = issue_token(store, "ada")  # type: ignore[arg-type]
        self.client = TestClient(create_app(store=store, model=self.model, environ={},
                                            rate_limit=None, system="server persona"))
        self.h = bearer(self.token)

    def raw(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = {**self.h, "Content-Type": "application/json"} if body is not None else self.h
        return self.client.request(method, path, content=body, headers=headers)


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    a = Api(store)
    yield a
    a.client.close()


def clean_json(r: Any) -> Any:
    """The response as UTF-8 JSON holding neither a surrogate nor a NUL."""
    text = r.content.decode("utf-8")
    assert "\\ud8" not in text.lower() and "\\udc" not in text.lower() and "\\u0000" not in text
    value = json.loads(text)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate inside
    assert "\x00" not in json.dumps(value, ensure_ascii=False)
    return value


def test_native_routes_store_bad_text_clean_and_export_it(api: Api) -> None:
    r = api.raw("POST", "/v1/conversations", b'{"title": "t \\ud83d", "system": "be \\u0000 kind"}')
    assert r.status_code == 201, r.text
    conv = clean_json(r)
    assert (conv["title"], conv["system"]) == (f"t {FFFD}", f"be {FFFD} kind")
    cid = conv["id"]
    r = api.raw("POST", f"/v1/conversations/{cid}/messages", b'{"content": "hi \\udc00 \\u0000"}')
    assert r.status_code == 200, r.text
    assert f"hi {FFFD} {FFFD}" in clean_json(r)["text"]  # the echo model saw the clean text
    r = api.raw("POST", f"/v1/conversations/{cid}/messages",
                b'{"content": "streamed \\ud800", "stream": true}')
    assert r.status_code == 200 and parse_sse(r)[-1][0] == "done"
    r = api.raw("PATCH", f"/v1/conversations/{cid}", b'{"title": "renamed \\ud800"}')
    assert r.status_code == 200 and clean_json(r)["title"] == f"renamed {FFFD}"
    r = api.raw("POST", "/v1/memory", b'{"statement": "likes \\ud83d tea", "subject": "\\u0000"}')
    assert r.status_code == 201, r.text
    assert (clean_json(r)["statement"], clean_json(r)["subject"]) == (f"likes {FFFD} tea", FFFD)
    for path in (f"/v1/conversations/{cid}", "/v1/conversations", "/v1/memory", "/v1/me/export"):
        r = api.raw("GET", path)
        assert r.status_code == 200, (path, r.text)
        clean_json(r)
    sent = api.model.last_request
    assert sent is not None and [b.text for b in sent.system] == [f"be {FFFD} kind"]
    r = api.raw("GET", f"/v1/conversations/{cid}/context?message=a%00b")  # NUL in a query
    assert r.status_code == 200
    assert clean_json(r)["request"]["messages"][-1]["content"][-1]["text"] == f"a{FFFD}b"
    # %00 in a path is a conversation or fact that does not exist: 404, never a store error.
    for method, path in (("GET", "/v1/conversations/a%00b"), ("DELETE", "/v1/memory/f%00"),
                         ("GET", "/v1/conversations/a%00b/context?message=x")):
        r = api.raw(method, path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", (path, r.text)


def test_blank_content_is_one_422_on_every_route(api: Api) -> None:
    cid = api.client.post("/v1/conversations", json={}, headers=api.h).json()["id"]
    refused = [
        api.client.post(f"/v1/conversations/{cid}/messages", json={"content": " \n "}, headers=api.h),
        api.client.post(f"/v1/conversations/{cid}/messages", json={"content": "\t", "stream": True},
                        headers=api.h),
        api.client.get(f"/v1/conversations/{cid}/context?message=", headers=api.h),
        api.client.get(f"/v1/conversations/{cid}/context?message=%20%20", headers=api.h),
        api.client.patch(f"/v1/conversations/{cid}", json={"title": "   "}, headers=api.h),
        api.client.post("/v1/conversations", json={"title": " "}, headers=api.h),
        api.client.post("/v1/memory", json={"statement": "    "}, headers=api.h),
        api.client.post("/v1/memory", json={"statement": "\n\t "}, headers=api.h),
        api.client.post("/v1/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": "  "}]},
            headers={**api.h, "X-Colloquy-Conversation": "oa-blank"}),
        api.client.post("/v1/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
            headers={**api.h, "X-Colloquy-Conversation": "oa-blank"}),
    ]
    for r in refused:
        assert r.status_code == 422, (r.request.url, r.text)
        error = r.json()["error"]
        # The OpenAI-compatible route answers in OpenAI's shape (colloquy's kind as the code).
        kind = error["code"] if r.request.url.path == "/v1/chat/completions" else error["type"]
        assert kind == "invalid_request" and error["message"].endswith("is empty")
    assert api.store.load(cid) == [] and api.store.list_facts("ada") == []  # type: ignore[attr-defined]
    assert [c.id for c in api.store.list_conversations(user_id="ada")] == [cid]
    assert api.model.requests == []


def test_a_whitespace_persona_is_no_persona_on_both_routes(api: Api) -> None:
    cid = api.client.post("/v1/conversations", json={"system": "  \n "}, headers=api.h).json()["id"]
    r = api.client.get(f"/v1/conversations/{cid}/context?message=hi", headers=api.h)
    assert r.status_code == 200 and "system" not in r.json()["request"]
    r = api.client.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "system", "content": " "},
                                      {"role": "user", "content": "hi"}]},
        headers={**api.h, "X-Colloquy-Conversation": "oa-ws"})
    assert r.status_code == 200
    assert api.model.last_request is not None and api.model.last_request.system == []
    assert api.store.find_named("ada", "oa-ws").persona == ""  # type: ignore[attr-defined, union-attr]


@pytest.mark.parametrize("kind", ["sqlite", *postgres_kinds()])
def test_the_openai_route_with_the_sdk_and_raw_escapes(kind: str, tmp_path: Any) -> None:
    """NUL through the official SDK (it encodes text as UTF-8, so it cannot send a lone
    surrogate: those come as JSON escapes from other clients, sent raw here). The route
    stores both clean; the next turns and the export work."""
    store = make_store(kind, tmp_path)
    model = EchoModel()
    token = issue_token(store, "ada")  # type: ignore[arg-type]
    head = {"X-Colloquy-Conversation": "sur"}
    with serve_in_thread(create_app(store=store, model=model, environ={}, rate_limit=None)) as url:
        r = httpx.post(url + "/v1/chat/completions", headers={**bearer(token), **head, **JSON}, content=(
            b'{"model": "echo", "messages": [{"role": "system", "content": "be \\ud800"},'
            b' {"role": "user", "content": [{"type": "text", "text": "x \\ud800 y"}]}]}'))
        assert r.status_code == 200 and f"x {FFFD} y" in clean_json(r)["choices"][0]["message"][
            "content"]
        client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
        stream = client.chat.completions.create(model="echo", extra_headers=head, stream=True,
                                                messages=[{"role": "user", "content": "n\x00l"}])
        assert f"n{FFFD}l" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.chat.completions.create(model="echo", extra_headers=head,
                                       messages=[{"role": "user", "content": "plain"}])
        assert store.find_named("ada", "sur").persona == f"be {FFFD}"  # type: ignore[attr-defined, union-attr]
        with pytest.raises(openai.BadRequestError):  # an id holding NUL: refused, not a 500
            client.chat.completions.create(model="echo", user="bad\x00id",
                                           messages=[{"role": "user", "content": "hi"}])
        r = httpx.get(url + "/v1/me/export", headers=bearer(token))
        assert r.status_code == 200
        assert len(clean_json(r)["sessions"][0]["messages"]) == 6
    store.close()


#: Where each compatible route reads the conversation's name: (route, header or body field).
NAME_SOURCES = [("openai", "header"), ("openai", "metadata.conversation_id"), ("openai", "user"),
                ("anthropic", "header"), ("anthropic", "metadata.user_id")]


def named_request(api: Api, route: str, source: str, name: str, text: str,
                  path: str = "") -> Any:
    headers = {**api.h, **({"X-Colloquy-Conversation": name} if source == "header" else {})}
    body: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": text}]}
    if source.startswith("metadata."):
        body["metadata"] = {source.removeprefix("metadata."): name}
    elif source == "user":
        body["user"] = name
    if route == "anthropic":
        return api.client.post(path or "/v1/messages", json={**body, "max_tokens": 50},
                               headers=headers)
    return api.client.post("/v1/chat/completions", json=body, headers=headers)


@pytest.mark.parametrize("route,source", NAME_SOURCES)
def test_a_blank_conversation_name_is_no_name_on_every_compatible_source(
        api: Api, route: str, source: str) -> None:
    """A blank header, metadata or ``user`` (spaces, U+200B, U+3000) names no conversation, as
    an empty one always did (and as an HTTP server makes a header of spaces): the request is
    answered in the conversation its history finds. It was a 400 that named no source."""
    blanks = [" ", "\t "] if source == "header" else [" ", "\u200b", "\u3000 "]
    for i, blank in enumerate(blanks):
        r = named_request(api, route, source, blank, f"hello {i}")
        assert r.status_code == 200, (blank, r.text)
        assert r.headers["X-Colloquy-Conversation"].startswith("replay-")
    if route == "anthropic":  # count_tokens reads the name the same way
        r = named_request(api, route, source, " ", "hi", path="/v1/messages/count_tokens")
        assert r.status_code == 200, r.text
    names = [c.name for c in api.store.list_conversations(user_id="ada")]
    assert len(names) == len(blanks) and all(n.startswith("replay-") for n in names)


@pytest.mark.parametrize("route,source", NAME_SOURCES)
def test_an_invalid_conversation_name_is_a_400_naming_its_source(
        api: Api, route: str, source: str) -> None:
    r = named_request(api, route, source, "two words", "hello")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    param = "X-Colloquy-Conversation" if source == "header" else source
    assert error["message"].startswith(f"{param}: conversation names")
    if route == "openai":  # OpenAI's error object has a param; the Messages API's has none
        assert error["param"] == param
    assert api.store.list_conversations(user_id="ada") == [] and api.model.requests == []
