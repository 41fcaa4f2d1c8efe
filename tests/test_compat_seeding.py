"""A compatible route's request that NAMES a new conversation is seeded with the history it
replays, as an unnamed one is (bound6 F1): a request ending with the results of tool calls
colloquy never saw is answered, not refused with "the request has no messages". Both routes
(OpenAI's chat completions through the ``openai`` SDK, Anthropic's Messages through the
``anthropic`` SDK), streamed and not, over a served app and the strict fake Claude."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fake_anthropic import message, stream as streamed, text
from test_compat_anthropic import MODEL, TITLE, Served, serve_claude


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve_claude(tmp_path)


def _sent_roles(served: Served) -> list[list[str]]:
    return [[b["type"] for m in body["messages"] for b in m["content"]]
            for body in served.turns()]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_route_named_new_conversation_ending_with_tool_results(
        served: Served, stream: bool) -> None:
    served.fake.enqueue((streamed if stream else message)(text("It is sunny.")), TITLE)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0)
    messages: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    tools: list[Any] = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    name = f"legit-{stream}"
    if stream:
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=messages, tools=tools, stream=True,
            extra_headers={"X-Colloquy-Conversation": name}))
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        done = client.chat.completions.create(model=MODEL, messages=messages, tools=tools,
                                              extra_headers={"X-Colloquy-Conversation": name})
        answer = done.choices[0].message.content or ""
    assert answer == "It is sunny."
    assert _sent_roles(served)[0] == ["text", "tool_use", "tool_result"]
    assert [b["type"] for m in served.log(name) for b in m["content"]] == [
        "text", "tool_use", "tool_result", "text"]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_route_named_new_conversation_ending_with_tool_results(
        served: Served, stream: bool) -> None:
    served.fake.enqueue((streamed if stream else message)(text("Found it.")), TITLE)
    messages: list[Any] = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                           "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "result"}]}]
    tools: list[Any] = [{"name": "lookup", "input_schema": {"type": "object"}}]
    name = f"named-{stream}"
    if stream:
        with served.client.messages.stream(model=MODEL, max_tokens=100, messages=messages,
                                           tools=tools, metadata={"user_id": name}) as s:
            answer = s.get_final_message()
    else:
        answer = served.client.messages.create(model=MODEL, max_tokens=100, messages=messages,
                                               tools=tools, metadata={"user_id": name})
    assert [b.text for b in answer.content if b.type == "text"] == ["Found it."]
    assert _sent_roles(served)[0] == ["text", "tool_use", "tool_result"]
    assert [b["type"] for m in served.log(name) for b in m["content"]] == [
        "text", "tool_use", "tool_result", "text"]
