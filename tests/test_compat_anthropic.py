"""The Anthropic-compatible route (issue 14, item 3): ``POST /v1/messages`` (streamed and not)
and ``POST /v1/messages/count_tokens``, with the official ``anthropic`` SDK as the client of a
real socket and the fake Anthropic server as the provider: the Messages API's request, SSE and
error shapes, backed by colloquy's conversations (stored, found by name or by the replayed
history), thinking (streamed with its signature, replayed inside a tool loop as the API
requires), client tools, documents, and the same costs."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from colloquy.models.anthropic import AnthropicModel
from colloquy.server import create_app
from colloquy.store import SQLiteStore
from colloquy.store.users import issue_token
from fake_anthropic import FakeAnthropic, message, stream, text, thinking, tool_use
from server_helpers import serve_in_thread

MODEL = "claude-sonnet-4-6"
#: The title colloquy asks Claude (haiku, through the same client) for after a first turn.
TITLE = message(text("A title"))
WEATHER = {"name": "get_weather", "description": "the weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


class Served:
    def __init__(self, url: str, token: str, store: SQLiteStore, fake: FakeAnthropic) -> None:
        self.url, self.token, self.store, self.fake = url, token, store, fake
        self.client = anthropic.Anthropic(base_url=url, api_key=token, max_retries=0)

    def turns(self) -> list[dict[str, Any]]:
        """The provider's turn requests (not the title calls)."""
        return [r.body for r in self.fake.requests
                if r.path.startswith("/v1/messages") and r.body.get("model") == MODEL
                and "count_tokens" not in r.path]

    def log(self, name: str) -> list[dict[str, Any]]:
        conv = self.store.find_named("ann", name)
        assert conv is not None
        return [sm.message.to_anthropic() for sm in self.store.load(conv.id)]


def serve_claude(tmp_path: Path, **options: Any) -> Iterator[Served]:
    """A served app over SQLite whose model is a fake Claude (create_app ``options`` on top of
    no rate limit)."""
    store = SQLiteStore(tmp_path / "a.db")
    token = issue_token(store, "ann")
    with FakeAnthropic() as fake:
        model = AnthropicModel(MODEL, api_key="sk-ant-test", base_url=fake.base_url,
                               max_retries=0)
        with serve_in_thread(create_app(store=store, model=model, environ={},
                                        **{"rate_limit": None, **options})) as url:
            yield Served(url, token, store, fake)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve_claude(tmp_path)


def named(name: str) -> dict[str, str]:
    return {"X-Colloquy-Conversation": name}


def test_a_message_is_answered_in_the_messages_shape_and_stored(served: Served) -> None:
    served.fake.enqueue(message(text("Hello!"), input_tokens=12, output_tokens=3), TITLE)
    reply = served.client.messages.create(model=MODEL, max_tokens=100, system="Be brief.",
                                          messages=[{"role": "user", "content": "hi"}],
                                          extra_headers=named("a1"))
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert [b.type for b in reply.content] == ["text"] and reply.content[0].text == "Hello!"
    assert reply.stop_reason == "end_turn" and reply.model == MODEL
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (12, 3)
    extra = reply.model_extra or {}
    assert extra["colloquy"]["conversation_id"] == "a1" and extra["colloquy"]["cost_usd"] > 0
    assert served.turns()[0]["system"][0]["text"] == "Be brief."
    assert [m["content"][0]["text"] for m in served.log("a1")] == ["hi", "Hello!"]


def test_streaming_carries_thinking_with_its_signature_then_the_text(served: Served) -> None:
    block = thinking("Let me think about Oslo.")
    served.fake.enqueue(stream(block, text("It is cold."), output_tokens=40), TITLE)
    with served.client.messages.stream(
            model=MODEL, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "Oslo in winter?"}],
            extra_headers=named("s1")) as events:
        kinds = [e.type for e in events]
        final = events.get_final_message()
    assert "thinking" in kinds and "signature" in kinds and "text" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == block["thinking"]  # type: ignore[union-attr]
    assert final.content[0].signature == block["signature"]  # type: ignore[union-attr]
    assert final.content[1].text == "It is cold."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 40
    sent = served.turns()[0]
    # The API's max_tokens holds the budget: the provider got the same budget and total.
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] == 4000
    assert served.log("s1")[1]["content"][0] == block


def test_client_tools_with_thinking_replay_the_stored_thinking_in_the_loop(served: Served
                                                                           ) -> None:
    """The client sends its tool result back with a history of its own (no thinking at all):
    colloquy replays the stored thinking block unmodified (the fake refuses the loop otherwise)."""
    block = thinking("I should call the weather tool.")
    served.fake.enqueue(
        message(block, tool_use("toolu_1", "get_weather", {"city": "Oslo"}),
                stop_reason="tool_use"),
        TITLE, message(text("Sunny.")))
    budget = {"type": "enabled", "budget_tokens": 1024}
    first = served.client.messages.create(
        model=MODEL, max_tokens=2000, thinking=budget, tools=[WEATHER],
        messages=[{"role": "user", "content": "Oslo?"}], extra_headers=named("t1"))
    assert first.stop_reason == "tool_use" and first.content[-1].type == "tool_use"
    second = served.client.messages.create(
        model=MODEL, max_tokens=2000, thinking=budget, tools=[WEATHER],
        messages=[{"role": "user", "content": "Oslo?"},
                  {"role": "assistant", "content": [
                      {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                       "input": {"city": "Oslo"}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}],
        extra_headers=named("t1"))
    assert second.content[0].text == "Sunny."  # type: ignore[union-attr]
    sent = served.turns()[-1]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["messages"][1]["content"][0] == block
    assert sent["messages"][2]["content"][0]["tool_use_id"] == "toolu_1"


def test_a_document_with_citations_is_taken_and_kept(served: Served) -> None:
    pdf = base64.b64encode(b"%PDF-1.7 fake").decode()
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": pdf},
           "title": "Report", "citations": {"enabled": True}}
    served.fake.enqueue(message(text("It says hi.")), TITLE)
    served.client.messages.create(model=MODEL, max_tokens=100, extra_headers=named("d1"),
                                  messages=[{"role": "user", "content": [
                                      doc, {"type": "text", "text": "What does it say?"}]}])
    assert served.turns()[0]["messages"][0]["content"][0] == doc
    assert served.log("d1")[0]["content"][0] == doc


def test_count_tokens_counts_the_turns_request_and_stores_nothing(served: Served) -> None:
    served.fake.enqueue(message(text("Hello!")), TITLE)
    served.client.messages.create(model=MODEL, max_tokens=100, extra_headers=named("c1"),
                                  messages=[{"role": "user", "content": "hi"}])
    short = served.client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "next"}], extra_headers=named("c1"))
    longer = served.client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "next " * 200}],
        extra_headers=named("c1"))
    fresh = served.client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "next"}], extra_headers=named("c2"))
    assert 0 < fresh.input_tokens < short.input_tokens < longer.input_tokens
    assert len(served.log("c1")) == 2 and served.store.find_named("ann", "c2") is None


def test_errors_have_the_messages_apis_shape(served: Served) -> None:
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        served.client.messages.create(model="claude-imaginary", max_tokens=10, messages=hi)
    assert unknown.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": unknown.value.body["error"]["message"]}}
    with pytest.raises(anthropic.BadRequestError) as prefill:
        served.client.messages.create(model=MODEL, max_tokens=10, messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}])
    assert prefill.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as budget:
        served.client.messages.create(model=MODEL, max_tokens=1000, messages=hi,
                                      thinking={"type": "enabled", "budget_tokens": 2000})
    assert "budget_tokens" in budget.value.message
    r = httpx.post(served.url + "/v1/messages", headers={"x-api-key": served.token},
                   json={"model": MODEL, "messages": hi})  # no max_tokens
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    bad = anthropic.Anthropic(base_url=served.url, api_key="not-a-token", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        bad.messages.create(model=MODEL, max_tokens=10, messages=hi)
    assert auth.value.body["error"]["type"] == "authentication_error"
    assert served.fake.requests == []


def test_models_list_in_the_anthropic_shape(served: Served) -> None:
    assert [m.id for m in served.client.models.list()] == [MODEL]


def test_an_unnamed_conversation_is_found_by_its_replayed_history(served: Served) -> None:
    served.fake.enqueue(stream(text("Hi there.")), TITLE, stream(text("Fine.")))
    history: list[Any] = [{"role": "user", "content": "hello"}]
    with served.client.messages.stream(model=MODEL, max_tokens=100, messages=history) as s:
        first = s.get_final_message()
    name = (first.model_extra or {}).get("colloquy", {}).get("conversation_id")
    history += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": "how are you?"}]
    with served.client.messages.stream(model=MODEL, max_tokens=100, messages=history) as s:
        s.get_final_message()
    sent = served.turns()[-1]["messages"]
    assert [m["content"][0]["text"] if isinstance(m["content"], list) else m["content"]
            for m in sent] == ["hello", "Hi there.", "how are you?"]
    convs = served.store.list_conversations(user_id="ann")
    assert len(convs) == 1 and convs[0].name.startswith("replay-") and name in (None, convs[0].name)
