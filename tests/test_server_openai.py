"""The OpenAI-compatible endpoint, driven by the official ``openai`` SDK against a real server on
loopback: the client sends only its new message and a conversation id; colloquy supplies the
persona and the history, stores the turn, and streams in OpenAI's chunk format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from colloquy import EchoModel, SQLiteStore
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import serve_in_thread


class Live:
    def __init__(self, url: str, store: SQLiteStore, model: EchoModel, ada: str, bob: str) -> None:
        self.url, self.store, self.model, self.ada, self.bob = url, store, model, ada, bob

    def client(self, token: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=token or self.ada, max_retries=0)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    store = SQLiteStore(Path(tmp_path_factory.mktemp("oa")) / "oa.db")
    model = EchoModel(delay=0.01)  # streamed words 10 ms apart, so each is its own chunk
    ada, bob = issue_token(store, "ada"), issue_token(store, "bob")
    app = create_app(store=store, model=model, environ={}, rate_limit=None,
                     system="You are colloquy's test persona.")
    with serve_in_thread(app) as url:
        yield Live(url, store, model, ada, bob)
    store.close()


def test_the_sdk_sends_only_the_new_message_and_colloquy_adds_the_history(live: Live) -> None:
    client = live.client()
    first = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "my name is Ada"}],
        extra_headers={"X-Colloquy-Conversation": "oa-header"})
    assert first.choices[0].message.role == "assistant"
    assert "last user text: 'my name is Ada'" in (first.choices[0].message.content or "")
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and first.usage.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens

    second = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "what is my name?"}],
        extra_headers={"X-Colloquy-Conversation": "oa-header"})
    assert "received 3 messages" in (second.choices[0].message.content or "")
    sent = live.model.last_request
    assert [m.text for m in sent.messages if m.role == "user"] == ["my name is Ada", "what is my name?"]
    assert [b.text for b in sent.system] == ["You are colloquy's test persona."]
    # The turn is stored like any other, under the caller's user id.
    conv = live.store.find_named("ada", "oa-header")
    assert conv.user_id == "ada" and conv.last_seq == 4
    assert second.model_extra and second.model_extra["colloquy"]["conversation_id"] == "oa-header"


def test_the_conversation_can_be_named_by_metadata_or_user(live: Live) -> None:
    client = live.client()
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}],
                                   metadata={"conversation_id": "oa-meta"})
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "b"}],
                                   user="oa-meta")
    assert [m.message.text for m in live.store.load(live.store.find_named("ada", "oa-meta").id) if m.role == "user"] == ["a", "b"]


def test_a_system_message_becomes_the_persona_of_a_new_conversation(live: Live) -> None:
    live.client().chat.completions.create(
        model="echo", user="oa-persona",
        messages=[{"role": "system", "content": "Speak like a pirate."},
                  {"role": "user", "content": "old turn the client kept"},
                  {"role": "assistant", "content": "old answer"},
                  {"role": "user", "content": "ahoy"}])
    assert live.store.find_named("ada", "oa-persona").persona == "Speak like a pirate."
    sent = live.model.last_request
    # The new conversation was seeded with the history the client replays (as an unnamed one
    # is), so the model sees it; the persona is the system message, not a message.
    assert [m.text for m in sent.messages] == ["old turn the client kept", "old answer", "ahoy"]
    assert [b.text for b in sent.system] == ["Speak like a pirate."]


def test_streaming_in_openai_chunks(live: Live) -> None:
    client = live.client()
    stream = client.chat.completions.create(
        model="echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream please"}],
        extra_headers={"X-Colloquy-Conversation": "oa-stream"})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    text = "".join(pieces)
    assert len(pieces) > 3 and "last user text: 'stream please'" in text
    assert finish == "stop" and usage is not None and usage.completion_tokens > 0
    stored = live.store.load(live.store.find_named("ada", "oa-stream").id)
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1].message.text == text


def test_errors_reach_the_sdk_as_its_own_exceptions(live: Live) -> None:
    client = live.client()
    client.chat.completions.create(model="echo", user="oa-private",
                                   messages=[{"role": "user", "content": "ada only"}])
    # The same name from bob is bob's own conversation: ada's is out of reach, as a free name.
    other = live.client(live.bob).chat.completions.create(
        model="echo", user="oa-private", messages=[{"role": "user", "content": "let me in"}])
    assert "received 1 message" in (other.choices[0].message.content or "")
    with pytest.raises(openai.AuthenticationError):
        live.client("cq_wrong").chat.completions.create(
            model="echo", user="x", messages=[{"role": "user", "content": "hi"}])
    # No name: the replayed history finds the conversation (a new one for a first message).
    fresh = client.chat.completions.create(model="echo",
                                           messages=[{"role": "user", "content": "hi"}])
    assert (fresh.model_extra or {})["colloquy"]["conversation_id"].startswith("replay-")
    with pytest.raises(openai.BadRequestError):  # a malformed body is OpenAI's 400
        client.chat.completions.create(model="echo", user="x", messages=[])
    assert [m.message.text for m in live.store.load(live.store.find_named("ada", "oa-private").id)][0] == "ada only"
    assert len(live.store.load(live.store.find_named("ada", "oa-private").id)) == 2
