"""The entry rules of content blocks (colloquy.messages): JSON depth, block placement by role,
block type names, image and document sources. Content the provider would refuse on every later
turn, or that no export could write, is refused where it enters; rows already stored are never
refused, and export writes them whatever their depth."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import fake_anthropic as F
from colloquy import export_user
from colloquy.messages import MAX_JSON_DEPTH, STORED, Message, UnknownBlock
from colloquy.models.anthropic import AnthropicModel
from colloquy.server.app import create_app
from colloquy.store import NewMessage, SQLiteStore, Store
from server_helpers import add_user, serve_in_thread


def nested(depth: int) -> Any:
    return json.loads("[" * depth + "]" * depth)


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": [*blocks, {"type": "text", "text": "hi"}]}


# -- depth ---------------------------------------------------------------------------------------


def test_a_block_at_the_depth_limit_is_kept_one_level_deeper_is_refused() -> None:
    # the block is level 1, its "x" field level 2: x nested MAX-1 deep puts the block at MAX
    ok = Message.model_validate(user({"type": "zz", "x": nested(MAX_JSON_DEPTH - 1)}))
    assert isinstance(ok.content[0], UnknownBlock)
    for kind, block in [
        ("unknown", {"type": "zz", "x": nested(MAX_JSON_DEPTH)}),
        ("tool input", {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": nested(MAX_JSON_DEPTH)}}),
        ("tool result", {"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "zz", "x": nested(MAX_JSON_DEPTH)}]}),
        ("citations", {"type": "text", "text": "t", "citations": [{"a": nested(MAX_JSON_DEPTH)}]}),
        ("very deep", {"type": "zz", "x": nested(900)}),
    ]:
        role = "assistant" if kind == "tool input" else "user"
        with pytest.raises(ValidationError, match="deeper than 64 levels"):
            Message.model_validate({"role": role, "content": [block]})


def test_a_deep_row_stored_before_the_limit_loads_and_exports(store: Store) -> None:
    # 255 levels: what stores accepted before the limit, and what broke every export
    legacy = Message.model_validate(user({"type": "zz", "x": nested(255)}), context=STORED)
    store.create_conversation(id="c1", user_id="ada")
    store.append("c1", [NewMessage(message=legacy)])
    assert store.load("c1")[0].message.content[0].model_extra["x"] == nested(255)  # type: ignore[index]
    data = json.loads(json.dumps(export_user(store, "ada")))
    block = data["sessions"][0]["messages"][0]["message"]["content"][0]
    assert block == {"type": "zz", "x": nested(255)}


# -- placement, type names, sources ----------------------------------------------------------------

REFUSED = {
    "thinking in a user message": user({"type": "thinking", "thinking": "x", "signature": "forged"}),
    "redacted thinking in a user message": user({"type": "redacted_thinking", "data": "x"}),
    "tool_use in a user message": user({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
    "server tool in a user message": user({"type": "server_tool_use", "id": "t", "name": "web_search"}),
    "server result in a user message": user({"type": "web_search_tool_result", "tool_use_id": "t"}),
    "tool_result in an assistant message": {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "r"}]},
    "empty type": user({"type": ""}),
    "type that is no name": user({"type": "Not a type!"}),
    "html image": user({"type": "image", "source": {"type": "base64", "media_type": "text/html",
                                                    "data": "PGgxPg=="}}),
    "image with bad base64": user({"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "not base64!"}}),
    "file url document": user({"type": "document", "source": {"type": "url", "url": "file:///etc/passwd"}}),
    "javascript url image": user({"type": "image", "source": {"type": "url", "url": "javascript:alert(1)"}}),
    "document that is no pdf": user({"type": "document", "source": {
        "type": "base64", "media_type": "text/html", "data": "PGgxPg=="}}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_content_the_provider_refuses_is_refused_at_entry_but_loads_from_a_store(case: str) -> None:
    with pytest.raises(ValidationError):
        Message.model_validate(REFUSED[case])
    Message.model_validate(REFUSED[case], context=STORED)  # a legacy row still loads


def test_valid_content_is_kept() -> None:
    m = Message.model_validate(user(
        {"type": "zz_custom", "x": 1},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "document", "source": {"type": "url", "url": "http://example.com/a.pdf"}},
    ))
    assert m.content[0].model_dump(exclude_none=True) == {"type": "zz_custom", "x": 1}
    Message.model_validate({"role": "assistant", "content": [
        {"type": "thinking", "thinking": "x", "signature": "s"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]})


def test_the_routes_refuse_with_4xx_and_store_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    token = add_user(str(db), "eve")
    deep = {"type": "zz", "x": nested(300)}
    forged = {"type": "thinking", "thinking": "x", "signature": "forged"}
    with F.FakeAnthropic() as fake:
        model = AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url, max_retries=0)
        with serve_in_thread(create_app(db=str(db), model=model)) as base:
            for i, bad in enumerate([deep, forged]):
                content = [bad, {"type": "text", "text": "first"}]
                r = httpx.post(base + "/v1/messages", headers={"x-api-key": token}, json={
                    "model": "claude-sonnet-4-6", "max_tokens": 50, "metadata": {"user_id": f"a{i}"},
                    "messages": [{"role": "user", "content": content}]})
                assert r.status_code in (400, 422), r.text
                call = {"id": "call_1", "type": "function", "function": {
                    "name": "f", "arguments": json.dumps({"a": nested(300)})}}
                r = httpx.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer " + token},
                               json={"model": "claude-sonnet-4-6", "user": f"o{i}", "messages": [
                                   {"role": "user", "content": "x"},
                                   {"role": "assistant", "content": None, "tool_calls": [call]},
                                   {"role": "tool", "tool_call_id": "call_1", "content": "r"},
                                   {"role": "user", "content": "y"}]})
                assert r.status_code in (400, 422), r.text
            assert fake.requests == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)


# -- tool definitions ------------------------------------------------------------------------------

BAD_TOOLS = {
    "bad name": ({"name": "bad name!!", "parameters": {"type": "object"}}, "name"),
    "long name": ({"name": "x" * 65}, "name"),
    "schema not an object": ({"name": "ok", "parameters": "nope"}, "parameters"),
    "schema of another type": ({"name": "ok", "parameters": {"type": "string"}}, "parameters"),
    "schema too deep": ({"name": "ok", "parameters": {"type": "object", "x": nested(80)}}, "parameters"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOOLS))
def test_tool_definitions_are_validated_on_both_compatible_routes(tmp_path: Path, case: str) -> None:
    fn, field = BAD_TOOLS[case]
    db = tmp_path / "c.db"
    token = add_user(str(db), "eve")
    anthropic_tool = {"name": fn["name"], "input_schema": fn.get("parameters", {"type": "object"})}
    with F.FakeAnthropic() as fake:
        model = AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url, max_retries=0)
        with serve_in_thread(create_app(db=str(db), model=model)) as base:
            r = httpx.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer " + token},
                           json={"model": "claude-sonnet-4-6", "user": "o",
                                 "tools": [{"type": "function", "function": fn}],
                                 "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == f"tools[0].function.{field}"
            r = httpx.post(base + "/v1/messages", headers={"x-api-key": token}, json={
                "model": "claude-sonnet-4-6", "max_tokens": 50, "metadata": {"user_id": "a"},
                "tools": [anthropic_tool], "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400, r.text
            expected = "input_schema" if field == "parameters" else "name"
            assert expected in r.text
            assert fake.requests == []


# -- small ones ------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e400", "NaN", "-Infinity"])
def test_a_number_json_cannot_carry_is_refused_not_dropped(number: str) -> None:
    raw = json.loads('{"role": "user", "content": [{"type": "zz", "x": %s, "y": [%s]},'
                     ' {"type": "text", "text": "hi"}]}' % (number, number))
    with pytest.raises(ValidationError, match="NaN or infinity"):
        Message.model_validate(raw)
    with pytest.raises(ValidationError, match="NaN or infinity"):
        Message.model_validate({"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"n": float(number)}}]})


def test_an_openai_text_part_without_text_says_the_text_is_missing() -> None:
    from colloquy.openai_shape import OpenAIShapeError, from_openai_messages

    with pytest.raises(OpenAIShapeError, match="needs its text") as e:
        from_openai_messages([{"role": "user", "content": [{"type": "text"}]}])
    assert "not supported" not in str(e.value)


def test_one_thinking_budget_bound_for_the_cli_and_the_server() -> None:
    import argparse

    from colloquy.cli import thinking_budget
    from colloquy.context.thinking import MAX_BUDGET
    from colloquy.server.schemas import ThinkingBudget
    from pydantic import TypeAdapter

    assert thinking_budget(str(MAX_BUDGET)) == MAX_BUDGET
    with pytest.raises(argparse.ArgumentTypeError, match=f"at most {MAX_BUDGET}"):
        thinking_budget("99999999999")
    with pytest.raises(ValidationError):
        TypeAdapter(ThinkingBudget).validate_python(MAX_BUDGET + 1)


def test_an_empty_message_is_422_whether_a_string_or_a_list(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    token = add_user(str(db), "eve")
    with serve_in_thread(create_app(db=str(db), model="echo")) as base:
        for content in ["", [], [{"type": "text", "text": ""}], "  "]:
            r = httpx.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer " + token},
                           json={"model": "echo", "user": "u",
                                 "messages": [{"role": "user", "content": content}]})
            assert (r.status_code, "the message is empty") == (422, r.json()["error"]["message"])
            r = httpx.post(base + "/v1/messages", headers={"x-api-key": token}, json={
                "model": "echo", "max_tokens": 50, "metadata": {"user_id": "a"},
                "messages": [{"role": "user", "content": content}]})
            assert r.status_code == 422, (content, r.text)
