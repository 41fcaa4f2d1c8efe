"""The request repair makes any stored log sendable (bound6 F4), fuzzed.

A stored log can hold anything an older version, an import or a crash left: duplicate tool-call
ids, results that answer nothing or answer twice, results out of place, calls never answered,
replies cut while thinking. Whatever the log, the request built from it must pass the API's
rules, as the strict fakes (tests/fake_anthropic.py, tests/fake_openai.py) check them, for
Claude with thinking on and off and for an OpenAI-shaped model. The log is stored through a
real store and the request built by :class:`colloquy.Chat` (policy, thinking replay, repair),
so nothing of colloquy's own is replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fake_anthropic as FA
import fake_openai as FO
from colloquy import Chat, EchoModel, MemoryStore, SQLiteStore
from colloquy.context.validate import problems, repair
from colloquy.errors import InvalidConversationError
from colloquy.messages import Message, ToolResultBlock, ToolUseBlock
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.openai import OpenAIModel
from colloquy.openai_shape import openai_messages
from colloquy.store import NewMessage

#: Few ids, so duplicates and results that answer the wrong call are common; two of them are
#: ids Anthropic refuses (a dot, a colon), which the repair maps.
IDS = ["toolu_1", "toolu_2", "call.3", "functions.lookup:0"]

_text = st.sampled_from(["hi", "more", " ", "", "trailing  "]).map(
    lambda t: {"type": "text", "text": t})
_use = st.sampled_from(IDS).map(lambda i: {"type": "tool_use", "id": i, "name": "lookup",
                                           "input": {"q": "x"}})
_result = st.sampled_from(IDS).map(lambda i: {"type": "tool_result", "tool_use_id": i,
                                              "content": "r"})
_thinking = st.sampled_from(["plan", "more plan"]).map(FA.thinking)
_assistant = st.lists(st.one_of(_text, _use, _thinking), min_size=1, max_size=4).map(
    lambda c: {"role": "assistant", "content": c})
_user = st.lists(st.one_of(_text, _result), min_size=1, max_size=4).map(
    lambda c: {"role": "user", "content": c})
LOGS = st.lists(st.one_of(_user, _assistant), min_size=1, max_size=8)


def _claude() -> AnthropicModel:
    return AnthropicModel("claude-sonnet-4-6", api_key="sk-ant-test", base_url="http://127.0.0.1:9",
                          max_retries=0)


def _openai() -> OpenAIModel:
    return OpenAIModel("gpt-4o", api_key="sk-test", base_url="http://127.0.0.1:9/v1",
                       max_retries=0)


def _stored(log: list[dict[str, Any]]) -> MemoryStore:
    store = MemoryStore()
    msgs = [NewMessage(message=Message.rebuilt(m["role"], m["content"])) for m in log]
    store.create_conversation(id="s")
    store.append("s", msgs, expected_seq=0)
    return store


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=LOGS, new=st.sampled_from([None, "next"]))
def test_every_stored_log_gives_a_request_both_providers_accept(
        log: list[dict[str, Any]], new: str | None) -> None:
    store = _stored(log)
    for budget in (None, 2048):
        chat = Chat(_claude(), store=store, session_id="s", title_model=False, thinking=budget,
                    max_tokens=4096)
        try:
            request = chat.next_request(new)
        except InvalidConversationError as e:  # nothing left to send, refused before a call
            assert new is None and str(e).endswith("the request has no messages")
            return
        body = request.to_anthropic()
        body.setdefault("model", "claude-sonnet-4-6")
        assert FA.request_problem(body) is None, (FA.request_problem(body), body)
        assert FA.content_problem(body) is None, json.dumps([FA.content_problem(body), log, new, body])
        if budget is None:
            assert "thinking" not in body
    chat = Chat(_openai(), store=store, session_id="s", title_model=False, max_tokens=256)
    request = chat.next_request(new)
    if request.messages:
        wire, _ = openai_messages(request.system, request.messages)
        assert FO.request_problem({"messages": wire}) is None, wire


def test_a_call_named_twice_with_one_result_gets_a_not_run_result() -> None:
    """The repair renames the second call's id and answers it, whatever the order."""
    use = ToolUseBlock(id="toolu_1", name="lookup", input={"q": "x"})
    msgs = [Message.user("hi"), Message.rebuilt("assistant", [use, use.model_copy()]),
            Message.rebuilt("user", [ToolResultBlock(tool_use_id="toolu_1", content="r"),
                                     ToolResultBlock(tool_use_id="toolu_1", content="r2"),
                                     ToolResultBlock(tool_use_id="toolu_1", content="r3")]),
            Message.user("next")]
    fixed, _, notes = repair(msgs)
    assert problems(fixed) == []
    ids = [u.id for u in fixed[1].tool_uses]
    assert len(set(ids)) == 2
    results = fixed[2].tool_results
    assert [r.tool_use_id for r in results] == ids
    assert results[0].content == "r" and results[1].content == "r2"
    assert any("interrupted" in n or "second result" in n or "ids" in n for n in notes)


def test_an_imported_log_with_a_repeated_tool_id_goes_on(tmp_path: Path) -> None:
    """The tester's file (bound6 f4): imported through the CLI into SQLite, then chatted on."""
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "r"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
    ]
    export = {"format": "colloquy.user-export", "version": 1, "user_id": "bob", "exported_at": 1.0,
              "sessions": [{"conversation": {
                  "id": "s1", "name": "s1", "user_id": "bob", "title": "t", "persona": "",
                  "model": "echo", "created_at": 1.0, "updated_at": 1.0, "last_seq": 4,
                  "meta": {}},
                  "messages": [{"seq": i + 1, "message": m, "created_at": 1.0, "meta": {}}
                               for i, m in enumerate(msgs)]}]}
    path, db = tmp_path / "e.json", tmp_path / "x.db"
    path.write_text(json.dumps(export))
    done = subprocess.run([sys.executable, "-m", "colloquy", "users", "import", str(path),
                           "--db", str(db)], capture_output=True, text=True,
                          env={**os.environ, "COLLOQUY_DB": str(db)})
    assert done.returncode == 0, done.stderr
    for i in range(2):
        chat = Chat(EchoModel(), store=SQLiteStore(db), session_id="s1", user_id="bob",
                    title_model=False)
        reply = chat.send(f"next {i}")
        assert f"next {i}" in reply.text
        assert problems(chat.next_request("again").messages) == []
