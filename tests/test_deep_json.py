"""Deeply nested JSON on every entry point: 65, 1,000 and 100,000 levels (a 200 KB body) answer
a clean 400 on the native, OpenAI-compatible and Anthropic-compatible routes (tool inputs,
``tool_calls[].function.arguments`` strings, metadata, tool schemas), never a 500 with a
RecursionError; ``users import`` of such a file is one line; the library refuses them with a
ValueError. The depth is checked iteratively before anything that recurses reads the value
(colloquy.messages.json_problem / json_text_depth)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from colloquy import Chat, EchoModel, MemoryStore, SQLiteStore, export_user, import_user
from colloquy.errors import ConfigError, ToolError
from colloquy.messages import Message, TextBlock, UnknownBlock, json_text_depth, parse_json
from colloquy.models.base import ToolSpec
from colloquy.server import create_app
from colloquy.store import Store
from colloquy.store.users import issue_token
from colloquy.text import clean_json
from server_helpers import bearer

DEPTHS = [65, 1_000, 100_000]


def nest(depth: int) -> str:
    """JSON text of ``depth`` nested arrays (no json.dumps: it recurses)."""
    return "[" * depth + "]" * depth


def deep_value(depth: int, leaf: Any = None) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth - 1):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    if leaf is not None:
        cur.append(leaf)
    return root


def bodies(depth: int) -> dict[str, tuple[str, str]]:
    n = nest(depth)
    args = json.dumps('{"k":%s}' % n)  # a JSON string holding the nesting
    return {
        "native content": ("/v1/conversations/deep/messages", '{"content":%s}' % n),
        "native tool_use input": ("/v1/conversations/deep/messages",
                                  '{"content":[{"type":"text","text":"a"},{"type":"zz","x":%s}]}' % n),
        "anthropic tool_use.input": ("/v1/messages", (
            '{"model":"echo","max_tokens":10,"messages":[{"role":"user","content":"a"},'
            '{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"k":%s}}]},'
            '{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"r"}]}]}') % n),
        "anthropic metadata": ("/v1/messages", '{"model":"echo","max_tokens":10,"messages":'
                               '[{"role":"user","content":"x"}],"metadata":%s}' % n),
        "anthropic tools": ("/v1/messages", '{"model":"echo","max_tokens":10,"messages":[{"role":'
                            '"user","content":"x"}],"tools":[{"name":"f","input_schema":{"type":'
                            '"object","properties":{"k":%s}}}]}' % n),
        "openai arguments": ("/v1/chat/completions", (
            '{"model":"echo","messages":[{"role":"user","content":"a"},{"role":"assistant",'
            '"content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f",'
            '"arguments":%s}}]},{"role":"tool","tool_call_id":"c1","content":"r"}]}') % args),
        "openai metadata": ("/v1/chat/completions", '{"model":"echo","messages":[{"role":"user",'
                            '"content":"a"}],"metadata":{"k":%s}}' % n),
        "openai tools": ("/v1/chat/completions", '{"model":"echo","messages":[{"role":"user",'
                         '"content":"a"}],"tools":[{"type":"function","function":{"name":"f",'
                         '"parameters":{"type":"object","properties":{"k":%s}}}}]}' % n),
    }


@pytest.fixture
def client(store: Store) -> Iterator[tuple[TestClient, dict[str, str]]]:
    token = issue_token(store, "ada")  # type: ignore[arg-type]
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/conversations", json={}, headers=bearer(token))
        assert r.status_code in (200, 201), r.text
        yield c, {**bearer(token), "Content-Type": "application/json", "X-Id": r.json()["id"]}


@pytest.mark.parametrize("depth", DEPTHS)
def test_every_route_answers_deep_json_with_a_clean_400(
        client: tuple[TestClient, dict[str, str]], store: Store, depth: int) -> None:
    c, headers = client
    cid = headers["X-Id"]
    for case, (path, body) in bodies(depth).items():
        path = path.replace("/deep/", f"/{cid}/")
        h = {**headers, "X-Colloquy-Conversation": "c" + str(depth)}
        r = c.post(path, content=body.encode(), headers=h)
        assert r.status_code in (400, 422), (case, depth, r.status_code, r.text[:300])
        assert r.json(), case  # the route's JSON error shape, not a traceback
    assert store.get_conversation(cid).last_seq == 0  # nothing stored
    assert [cv.id for cv in store.list_conversations()] == [cid]


@pytest.mark.parametrize("depth", DEPTHS)
def test_the_library_refuses_deep_values_without_recursing(depth: int) -> None:
    value = deep_value(depth)
    with pytest.raises(ValueError, match="deeper than 64"):
        Message.model_validate({"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"k": value}}]})
    with pytest.raises(ToolError, match="deeper than 64"):
        ToolSpec(name="f", input_schema={"type": "object", "properties": {"k": value}})
    with pytest.raises(ValueError, match="deeper than 64"):
        parse_json('{"k":%s}' % nest(depth))
    assert json_text_depth('{"a":"[[[[\\"[","b":%s}' % nest(depth)) == depth + 1


@pytest.mark.parametrize("depth", [2, 199, 200, 201, 202, 100_000])
def test_clean_json_cleans_any_depth(depth: int) -> None:
    """Either side of the 200 levels cleaned by recursion (the fast way), and far beyond."""
    value = {"k\ud800": deep_value(depth, "caf\udce9\x00"), "n": [1, 2.5, None, True]}
    cleaned = clean_json(value)
    assert list(cleaned) == ["k\ufffd", "n"] and cleaned["n"] is value["n"]
    inner = cleaned["k\ufffd"]
    for _ in range(depth - 1):
        inner = inner[0]
    assert inner == ["caf\ufffd\ufffd"]
    same = {"a": [1, "b", {"c": ("d",)}], "deep": deep_value(depth, "ok")}
    assert clean_json(same) is same


def export_data() -> dict[str, Any]:
    """A real export whose first message holds a block ``{"type": "zz", "x": "MARK"}``."""
    store = MemoryStore()
    Chat(EchoModel(), store=store, session_id="s1", user_id="bob").send(
        [TextBlock(text="hi"), UnknownBlock(type="zz", x="MARK")])
    return export_user(store, "bob")


def export_text(depth: int) -> str:
    """The export's JSON text with the block nesting ``depth`` levels."""
    text = json.dumps(export_data())
    assert text.count('"MARK"') == 1
    return text.replace('"MARK"', nest(depth))


@pytest.mark.parametrize("depth", DEPTHS)
def test_users_import_of_deep_json_is_one_line(tmp_path: Path, depth: int) -> None:
    for name, text in (("export", export_text(depth)), ("bare", nest(depth))):
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        p = subprocess.run([sys.executable, "-m", "colloquy", "users", "import", str(path),
                            "--db", str(tmp_path / "x.db")], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("colloquy: error:")]
        says = "deeper than" if name == "export" or depth > 128 else "not a colloquy user export"
        assert len(errors) == 1 and says in errors[0], p.stderr
    assert SQLiteStore(tmp_path / "x.db").list_conversations() == []


@pytest.mark.parametrize("depth", DEPTHS)
def test_import_user_refuses_a_deep_value(store: Store, depth: int) -> None:
    data = export_data()
    block = data["sessions"][0]["messages"][0]["message"]["content"][1]
    assert block["x"] == "MARK"
    block["x"] = deep_value(depth)
    with pytest.raises(ConfigError, match="deeper than"):
        import_user(store, data)
    assert store.list_conversations() == []
