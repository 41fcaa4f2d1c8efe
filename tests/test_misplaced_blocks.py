"""A conversation whose stored log holds a block where the Messages API refuses it (a row stored
before the entry rules, or restored from an old export: a thinking block in a user message, a
tool_result in an assistant message...) goes on: the request repair leaves such blocks out of
the request with a note (colloquy.context.validate, rule 8), the stored rows stay as they were
and are exported whole. On every store, through the library, the native route, both compatible
routes and an import, against the fake Claude, which refuses misplaced blocks as the API does."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from colloquy import Chat, Store, export_user
from colloquy.context.validate import problems, repair
from colloquy.messages import STORED, Message
from colloquy.models.anthropic import AnthropicModel
from colloquy.rights import delete_user, import_user
from colloquy.server import create_app
from colloquy.store import NewMessage, SQLiteStore
from colloquy.store.users import issue_token
from fake_anthropic import FakeAnthropic, message, sign, text
from server_helpers import bearer, serve_in_thread

MODEL = "claude-sonnet-4-6"

#: Rows an older colloquy could store: each message holds a block its role may not hold.
LEGACY: list[dict[str, Any]] = [
    {"role": "user", "content": [
        {"type": "thinking", "thinking": "pasted", "signature": sign("pasted")},
        {"type": "text", "text": "first question"}]},
    {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_x", "content": "stray"},
        {"type": "text", "text": "first answer"}]},
    {"role": "user", "content": [
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "toolu_y", "name": "f", "input": {}},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "text", "text": "second question"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "second answer"}]},
    # a message of misplaced blocks only: nothing of it can be sent
    {"role": "user", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
]
MISPLACED = {"thinking", "redacted_thinking", "tool_use", "server_tool_use",
             "web_search_tool_result"}


def legacy() -> list[Message]:
    return [Message.model_validate(m, context=STORED) for m in LEGACY]


def write_legacy(store: Store, cid: str, user_id: str = "ann", name: str | None = None) -> None:
    store.create_conversation(id=cid, user_id=user_id, name=name, title="old talk")
    store.append(cid, [NewMessage(message=m) for m in legacy()])


def stored_blocks(store: Store, cid: str) -> list[dict[str, Any]]:
    return [sm.message.model_dump(mode="json", exclude_none=True) for sm in store.load(cid)]


def assert_sendable(body: dict[str, Any]) -> None:
    for m in body["messages"]:
        blocks = m["content"] if isinstance(m["content"], list) else []
        kinds = {b["type"] for b in blocks}
        if m["role"] == "user":
            assert not kinds & MISPLACED, m
        else:
            assert "tool_result" not in kinds, m


@pytest.fixture
def claude() -> Iterator[tuple[FakeAnthropic, AnthropicModel]]:
    with FakeAnthropic() as fake:
        yield fake, AnthropicModel(MODEL, api_key="sk-ant-test", base_url=fake.base_url,
                                   max_retries=0)


def test_the_repair_leaves_misplaced_blocks_out_with_a_note() -> None:
    msgs = legacy()
    assert any("thinking block in a user message" in p for p in problems(msgs))
    fixed, sources, notes = repair(msgs, [[1], [2], [3], [4], [5]])
    assert problems([*fixed, Message.user("next")]) == []
    assert [m.text for m in fixed] == ["first question", "first answer", "second question",
                                       "second answer"]
    assert sources == [[1], [2], [3], [4]]
    assert any("left a thinking block stored in a user message out" in n for n in notes)
    assert any("left a tool_result block stored in an assistant message out" in n for n in notes)


def test_the_conversation_goes_on_and_the_rows_stay(
        store: Store, claude: tuple[FakeAnthropic, AnthropicModel]) -> None:
    fake, model = claude
    write_legacy(store, "c_old")
    before = stored_blocks(store, "c_old")
    fake.enqueue(message(text("third answer")), message(text("fourth answer")))
    chat = Chat(model, store=store, session_id="c_old")
    reply = chat.send("third question")
    assert reply.text == "third answer"
    assert any("left a tool_use block stored in a user message" in n for n in reply.notes)
    sent = fake.requests[-1].body
    assert_sendable(sent)
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant"] * 2 + ["user"]
    # a later turn, from a fresh Chat (another process), goes on too
    assert Chat(model, store=store, session_id="c_old").send("fourth").text == "fourth answer"
    assert_sendable(fake.requests[-1].body)
    assert stored_blocks(store, "c_old")[:5] == before, "the stored rows are never edited"
    exported = json.dumps(export_user(store, "ann"))
    assert '"signature": "s"' in exported and "toolu_y" in exported and "stray" in exported


@pytest.mark.parametrize("route", ["native", "openai", "anthropic"])
def test_every_route_goes_on(tmp_path: Path, claude: tuple[FakeAnthropic, AnthropicModel],
                             route: str) -> None:
    fake, model = claude
    store = SQLiteStore(tmp_path / "r.db")
    token = issue_token(store, "ann")
    write_legacy(store, "c_route", name="old-talk")
    fake.enqueue(message(text("answered")))
    app = create_app(store=store, model=model, environ={}, rate_limit=None)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(token),
                                                   timeout=30) as http:
        if route == "native":
            r = http.post("/v1/conversations/old-talk/messages", json={"content": "go on"})
            answer = r.json().get("text")
        else:
            body: dict[str, Any] = {"model": MODEL, "max_tokens": 100,
                                    "messages": [{"role": "user", "content": "go on"}]}
            r = http.post("/v1/chat/completions" if route == "openai" else "/v1/messages",
                          json=body, headers={"X-Colloquy-Conversation": "old-talk"})
            data = r.json()
            answer = (data["choices"][0]["message"]["content"] if route == "openai"
                      else data["content"][0]["text"])
    assert r.status_code == 200, r.text
    assert answer == "answered"
    assert_sendable(fake.requests[-1].body)
    assert len(store.load("c_route")) == len(LEGACY) + 2
    store.close()


def test_an_old_export_holding_such_rows_is_restored_and_goes_on(
        store: Store, claude: tuple[FakeAnthropic, AnthropicModel]) -> None:
    fake, model = claude
    write_legacy(store, "c_exp", user_id="newcomer")
    data = json.loads(json.dumps(export_user(store, "newcomer")))
    before = stored_blocks(store, "c_exp")
    delete_user(store, "newcomer", erase=False)
    report = import_user(store, copy.deepcopy(data))
    assert report.rows["messages"] == len(LEGACY)
    assert stored_blocks(store, "c_exp") == before, "restored as it was, never refused"
    fake.enqueue(message(text("back again")))
    assert Chat(model, store=store, session_id="c_exp").send("hello again").text == "back again"
    assert_sendable(fake.requests[-1].body)
