"""The OpenAI-compatible route, compatible (issue 14, item 2), through the official ``openai``
SDK as the client of a real socket and the fake OpenAI / Anthropic servers as providers:
client tools round-trip, images (data and https URLs, also inside tool results), /v1/models,
errors in OpenAI's shape, model_not_found, n > 1 refused, one chunk id per streamed completion
of the non-streamed scheme, include_usage, and conversations found by the history a client
replays (as ``llm`` does)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from colloquy import FunctionModel
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.openai import OpenAIModel
from colloquy.server import create_app
from colloquy.store import SQLiteStore
from colloquy.store.users import issue_token
from fake_anthropic import FakeAnthropic, message, text
from fake_openai import FakeOpenAI, ToolCall, Turn
from server_helpers import clean_env, serve_in_thread

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


#: The title colloquy asks the chat's own OpenAI model for after a conversation's first turn.
TITLE = Turn(text="A title")


def turns(provider: FakeOpenAI) -> list[dict[str, Any]]:
    """The bodies of the turn requests the provider received (not the title calls)."""
    return [r.body for r in provider.requests
            if "Title:" not in json.dumps(r.body["messages"][-1])]


class Served:
    def __init__(self, url: str, token: str, store: SQLiteStore) -> None:
        self.url, self.token, self.store = url, token, store
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)

    def log(self, name: str) -> list[dict[str, Any]]:
        conv = self.store.find_named("ann", name)
        assert conv is not None
        return [sm.message.to_anthropic() for sm in self.store.load(conv.id)]


@pytest.fixture
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def served(tmp_path: Path, provider: FakeOpenAI) -> Iterator[Served]:
    store = SQLiteStore(tmp_path / "c.db")
    token = issue_token(store, "ann")
    model = OpenAIModel("gpt-4o", api_key="sk-test-0123456789", base_url=provider.base_url,
                        environ={}, max_retries=0)
    with serve_in_thread(create_app(store=store, model=model, environ={},
                                    rate_limit=None)) as url:
        yield Served(url, token, store)


def test_client_tools_round_trip_and_the_pairs_stay_valid(served: Served, provider: FakeOpenAI
                                                          ) -> None:
    provider.push(Turn(tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Oslo"}')]),
                  TITLE, Turn(text="Sunny in Oslo."))
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = served.client.chat.completions.create(model="gpt-4o", messages=messages,
                                                  tools=[WEATHER], user="trip")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1", "get_weather", {"city": "Oslo"})
    # The provider was told about the client's tool.
    assert turns(provider)[-1]["tools"][0]["function"]["name"] == "get_weather"
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    second = served.client.chat.completions.create(model="gpt-4o", messages=messages,
                                                   tools=[WEATHER], user="trip")
    assert second.choices[0].message.content == "Sunny in Oslo."
    # The provider saw the call answered right after it (the fake refuses anything else).
    sent = turns(provider)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}
    log = served.log("trip")
    assert [b["type"] for m in log for b in m["content"]] == [
        "text", "tool_use", "tool_result", "text"]


def test_streamed_tool_calls_come_as_deltas_with_finish_reason_tool_calls(
        served: Served, provider: FakeOpenAI) -> None:
    provider.push(Turn(tool_calls=[ToolCall("call_9", "get_weather", '{"city": "Rome"}')]))
    chunks = list(served.client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Rome?"}], tools=[WEATHER],
        stream=True, user="st"))
    calls = [c for ch in chunks for c in (ch.choices[0].delta.tool_calls or []) if ch.choices]
    assert [(c.id, c.function.name if c.function else None) for c in calls] == [
        ("call_9", "get_weather")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_images_as_data_and_https_urls_reach_the_model(served: Served, provider: FakeOpenAI
                                                       ) -> None:
    provider.push(Turn(text="A pixel."), TITLE)
    served.client.chat.completions.create(model="gpt-4o", user="img", messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "What are these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    parts = turns(provider)[-1]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert parts[2]["image_url"]["url"] == "https://example.com/cat.jpg"
    stored = served.log("img")[0]["content"]
    assert stored[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}
    assert stored[2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}


def test_an_image_a_tool_returned_crosses_to_openai_with_a_note(served: Served,
                                                                provider: FakeOpenAI) -> None:
    provider.push(Turn(tool_calls=[ToolCall("call_s", "shot", "{}")]), TITLE,
                  Turn(text="I see it."))
    shot = {"type": "function", "function": {"name": "shot", "parameters": {"type": "object"}}}
    messages: list[Any] = [{"role": "user", "content": "Take a screenshot."}]
    first = served.client.chat.completions.create(model="gpt-4o", messages=messages,
                                                  tools=[shot], user="shot")
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "call_s", "content": [
                     {"type": "text", "text": "here"},
                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    second = served.client.chat.completions.create(model="gpt-4o", messages=messages,
                                                   tools=[shot], user="shot")
    sent = turns(provider)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert PNG in json.dumps(sent[3])
    notes = (second.model_extra or {})["colloquy"]["notes"]
    assert any("image" in n and "tool" in n for n in notes), notes


def test_models_are_listed_and_an_unknown_model_is_model_not_found(served: Served,
                                                                   provider: FakeOpenAI) -> None:
    assert [m.id for m in served.client.models.list()] == ["gpt-4o"]
    assert served.client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as found:
        served.client.models.retrieve("gpt-5-imaginary")
    assert found.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        served.client.chat.completions.create(
            model="gpt-5-imaginary", messages=[{"role": "user", "content": "hi"}], user="x")
    assert (err.value.code, err.value.param, err.value.type) == (
        "model_not_found", "model", "invalid_request_error")
    assert provider.requests == []  # never answered by another model
    assert served.store.find_named("ann", "x") is None


def test_errors_have_openais_shape(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as n:
        served.client.chat.completions.create(
            model="gpt-4o", n=2, messages=[{"role": "user", "content": "hi"}], user="x")
    assert (n.value.param, n.value.type) == ("n", "invalid_request_error")
    assert "n above 1" in n.value.message
    with pytest.raises(openai.BadRequestError) as part:
        served.client.chat.completions.create(model="gpt-4o", user="x", messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert part.value.param == "messages[0].content[0]"
    with pytest.raises(openai.BadRequestError) as shape:
        served.client.chat.completions.create(model="gpt-4o", messages=[], user="x")
    assert shape.value.type == "invalid_request_error" and shape.value.param == "messages"
    bad = openai.OpenAI(base_url=served.url + "/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad.models.list()
    assert auth.value.code == "invalid_api_key"
    assert served.store.find_named("ann", "x") is None


def test_streamed_chunks_share_one_id_of_the_completions_scheme_and_include_usage(
        served: Served, provider: FakeOpenAI) -> None:
    provider.push(Turn(text="one two three", pieces=["one ", "two ", "three"],
                       prompt_tokens=11, completion_tokens=3), TITLE, Turn(text="again"))
    chunks = list(served.client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "count"}], user="ids",
        stream=True, stream_options={"include_usage": True}))
    ids = {c.id for c in chunks}
    plain = served.client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "again"}], user="ids")
    scheme = re.compile(r"^chatcmpl-ids-[0-9a-f]{12}$")
    assert len(ids) == 1 and scheme.match(ids.pop()) and scheme.match(plain.id)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 3)
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "one two three"


def test_a_client_replaying_its_history_gets_one_conversation_per_client_conversation(
        served: Served, provider: FakeOpenAI) -> None:
    """Two client conversations that open alike, each replayed in full with no name (as ``llm``
    does): each continues its own stored conversation, and the model sees the stored history."""
    provider.push(Turn(text="Hello A."), TITLE, Turn(text="Hello B."), TITLE,
                  Turn(text="B again."), Turn(text="A again."))
    system = {"role": "system", "content": "Be brief."}
    a: list[Any] = [system, {"role": "user", "content": "hi"}]
    b: list[Any] = [system, {"role": "user", "content": "hi"}]
    ra = served.client.chat.completions.create(model="gpt-4o", messages=a)
    rb = served.client.chat.completions.create(model="gpt-4o", messages=b)
    name_a = (ra.model_extra or {})["colloquy"]["conversation_id"]
    name_b = (rb.model_extra or {})["colloquy"]["conversation_id"]
    assert name_a != name_b and name_a.startswith("replay-")
    a += [{"role": "assistant", "content": "Hello A."}, {"role": "user", "content": "and a?"}]
    b += [{"role": "assistant", "content": "Hello B."}, {"role": "user", "content": "and b?"}]
    rb2 = served.client.chat.completions.create(model="gpt-4o", messages=b)
    assert (rb2.model_extra or {})["colloquy"]["conversation_id"] == name_b
    assert [m["content"] for m in turns(provider)[-1]["messages"][1:]] == [
        "hi", "Hello B.", "and b?"]
    ra2 = served.client.chat.completions.create(model="gpt-4o", messages=a)
    assert (ra2.model_extra or {})["colloquy"]["conversation_id"] == name_a
    assert [m["content"][0]["text"] for m in served.log(name_a)] == [
        "hi", "Hello A.", "and a?", "A again."]
    assert turns(provider)[-1]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_replayed_history_colloquy_never_saw_is_kept(served: Served, provider: FakeOpenAI
                                                       ) -> None:
    provider.push(Turn(text="Paris."), TITLE)
    served.client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": "I live in Lyon."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Capital of France?"}])
    assert [m["content"] for m in turns(provider)[-1]["messages"]] == [
        "I live in Lyon.", "Noted.", "Capital of France?"]


def test_a_tool_loop_through_claude_keeps_the_pairs(tmp_path: Path) -> None:
    """The same client, with Claude behind colloquy: the OpenAI tool messages become
    tool_result blocks the fake Anthropic server accepts (it refuses unanswered calls)."""
    store = SQLiteStore(tmp_path / "c.db")
    token = issue_token(store, "ann")
    with FakeAnthropic() as fake:
        fake.enqueue(message({"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                              "input": {"city": "Oslo"}}, stop_reason="tool_use"),
                     message(text("Weather in Oslo")), message(text("Sunny.")))
        model = AnthropicModel("claude-sonnet-4-6", api_key="sk-ant-test",
                               base_url=fake.base_url, max_retries=0)
        with serve_in_thread(create_app(store=store, model=model, environ={},
                                        rate_limit=None)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
            messages: list[Any] = [{"role": "user", "content": "Oslo?"}]
            first = client.chat.completions.create(model="claude-sonnet-4-6",
                                                   messages=messages, tools=[WEATHER], user="c")
            assert first.choices[0].finish_reason == "tool_calls"
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]
            second = client.chat.completions.create(model="claude-sonnet-4-6",
                                                    messages=messages, tools=[WEATHER], user="c")
            assert second.choices[0].message.content == "Sunny."
        body = [r.body for r in fake.requests if r.body.get("tools")][-1]
        assert body["tools"][0]["name"] == "get_weather"
        result = body["messages"][-1]["content"][0]
        assert (result["type"], result["tool_use_id"], result["content"]) == (
            "tool_result", "toolu_1", "sunny")


def llm(user_dir: Path, *args: str) -> str:
    """Simon Willison's ``llm`` CLI, run as users run it, configured in ``user_dir``."""
    env = {**clean_env(), "LLM_USER_PATH": str(user_dir)}
    p = subprocess.run([sys.executable, "-m", "llm", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_llm_conversations_each_get_their_own_stored_conversation(tmp_path: Path) -> None:
    """``llm`` names no conversation and replays the whole history on ``llm -c``: each llm
    conversation continues its own stored one, streamed or not."""
    store = SQLiteStore(tmp_path / "l.db")
    token = issue_token(store, "ann")
    model = FunctionModel(lambda req: f"reply {len(req.messages)}: {req.messages[-1].text}",
                          name="echo")
    user_dir = tmp_path / "llm"
    user_dir.mkdir()
    (user_dir / "keys.json").write_text(json.dumps({"colloquy": token}))
    with serve_in_thread(create_app(store=store, model=model, environ={},
                                    rate_limit=None)) as url:
        (user_dir / "extra-openai-models.yaml").write_text(
            f"- model_id: colloquy\n  model_name: echo\n  api_base: {url}/v1\n"
            "  api_key_name: colloquy\n")
        assert llm(user_dir, "-m", "colloquy", "hello").strip() == "reply 1: hello"
        assert llm(user_dir, "-c", "--no-stream", "and then?").strip() == "reply 3: and then?"
        assert llm(user_dir, "-m", "colloquy", "hello").strip() == "reply 1: hello"
        assert llm(user_dir, "-c", "other").strip() == "reply 3: other"
        assert llm(user_dir, "-c", "more").strip() == "reply 5: more"
    convs = store.list_conversations(user_id="ann")
    assert len(convs) == 2 and all(c.name.startswith("replay-") for c in convs)
    logs = sorted([sm.message.text for sm in store.load(c.id) if sm.role == "user"]
                  for c in convs)
    assert logs == [["hello", "and then?"], ["hello", "other", "more"]]


def test_a_thinking_budget_reaches_claude_and_thinking_stays_out_of_the_chunks(
        tmp_path: Path) -> None:
    """colloquy's ``thinking`` extension on the OpenAI route: Claude thinks, the client gets the
    answer's text only (OpenAI's chunks have no thinking), the log keeps the thinking block."""
    from fake_anthropic import stream, thinking

    store = SQLiteStore(tmp_path / "t.db")
    token = issue_token(store, "ann")
    block = thinking("Counting the letters.")
    with FakeAnthropic() as fake:
        fake.enqueue(stream(block, text("Three.")), message(text("A title")))
        model = AnthropicModel("claude-sonnet-4-6", api_key="sk-ant-test",
                               base_url=fake.base_url, max_retries=0)
        with serve_in_thread(create_app(store=store, model=model, environ={},
                                        rate_limit=None)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
            chunks = list(client.chat.completions.create(
                model="claude-sonnet-4-6", stream=True, user="th", extra_body={"thinking": 1024},
                messages=[{"role": "user", "content": "How many r in 'strawberry'?"}]))
        assert fake.requests[0].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Three."
    conv = store.find_named("ann", "th")
    assert conv is not None
    assert store.load(conv.id)[1].message.to_anthropic()["content"][0] == block
