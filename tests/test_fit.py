"""The size rule (colloquy.context.fit): whatever the policy, no request is built over the
model's context window, and one oversized message does not break the turns after it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic, message, text

from colloquy import Chat, MemoryStore, ScriptedModel
from colloquy.context import (
    CacheAwareWindow,
    Context,
    ContextInput,
    ContextPolicy,
    FullHistory,
    RollingWindow,
    TokenBudget,
    make_policy,
    problems,
)
from colloquy.context.base import from_stored
from colloquy.errors import ContextTooLongError
from colloquy.messages import Message, ToolResultBlock, ToolUseBlock
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.limits import DEFAULT_CONTEXT_WINDOW, window_of
from colloquy.models.openai import OpenAIModel
from colloquy.store import NewMessage, SQLiteStore
from colloquy.tokens import TokenCounter

WINDOW = 4_000
MAX_TOKENS = 256
ROOM = WINDOW - MAX_TOKENS


class EverythingPolicy:
    """A user's own policy that sends the whole log, as a naive custom policy would."""

    def build(self, inp: ContextInput) -> Context:
        return from_stored(inp.history, inp.system)


POLICIES: dict[str, Callable[[], ContextPolicy]] = {
    "default": lambda: RollingWindow(20),
    "budget": lambda: TokenBudget(8000),
    "full": FullHistory,
    "cache-aware": lambda: CacheAwareWindow(50_000),
    "custom": EverythingPolicy,
    "facts": lambda: make_policy("facts", chat_model="echo"),
}


def size(chat: Chat, request: object) -> int:
    return chat.counter.count(chat.model.name, request.system, request.messages)  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_one_oversized_message_does_not_break_the_turns_after_it(policy: str) -> None:
    model = ScriptedModel([f"answer {i}" for i in range(40)], name="claude-sonnet-4-6")
    chat = Chat(model, store=MemoryStore(), policy=POLICIES[policy](), context_window=WINDOW,
                max_tokens=MAX_TOKENS, title_model=False, counter=TokenCounter())
    for i in range(3):
        chat.send(f"warm-up question {i}")
    pasted = "The log line says nothing new. " * 4_000  # ~24,000 tokens, six windows
    big = chat.send(pasted)
    assert any("cut" in n and "context window" in n for n in big.notes), big.notes
    sent = model.last_request.messages[-1].text
    assert "characters cut here by colloquy" in sent
    assert sent.startswith("The log line") and sent.rstrip().endswith("nothing new.")
    assert any(sm.message.text == pasted for sm in chat.history()), "the log keeps the whole text"
    for i in range(25):
        assert chat.send(f"short question {i}").text.startswith("answer")
    for request in model.requests:
        assert size(chat, request) <= ROOM, "a request over the window"
        assert problems(request.messages, request.system) == []
    # The newest turns are kept: the last request still holds the previous short turns.
    assert "short question 23" in " ".join(m.text for m in model.last_request.messages)


def test_dropping_old_turns_never_splits_a_tool_exchange() -> None:
    model = ScriptedModel(["ok"] * 10, name="claude-sonnet-4-6")
    store = MemoryStore()
    chat = Chat(model, store=store, policy=FullHistory(), context_window=WINDOW,
                max_tokens=MAX_TOKENS, title_model=False, counter=TokenCounter())
    chat.send("first")
    store.append(chat.session_id, [
        NewMessage(message=Message.user("fetch the report")),
        NewMessage(message=Message(role="assistant", content=[ToolUseBlock(id="t1", name="fetch")])),
        NewMessage(message=Message(role="user", content=[
            ToolResultBlock(tool_use_id="t1", content="row of data\n" * 2_000)])),
        NewMessage(message=Message.assistant("Here is the report.")),
    ])
    for i in range(3):
        chat.send(f"next {i}")
        assert problems(model.last_request.messages) == []
        assert size(chat, model.last_request) <= ROOM


def test_a_huge_tool_result_in_the_newest_turn_is_cut() -> None:
    from colloquy import ModelResponse, tool, tool_call

    @tool
    def dump() -> str:
        """Dump everything."""
        return "a line of output\n" * 20_000

    model = ScriptedModel([ModelResponse(content=[tool_call("dump", {}, id="t1")], stop_reason="tool_use"),
                           "Summary."], name="claude-sonnet-4-6")
    chat = Chat(model, tools=[dump], store=MemoryStore(), context_window=WINDOW,
                max_tokens=MAX_TOKENS, title_model=False, counter=TokenCounter())
    reply = chat.send("dump it")
    assert reply.text == "Summary."
    result = model.last_request.messages[-1].tool_results[0]
    assert "characters cut here by colloquy" in result.text
    assert size(chat, model.last_request) <= ROOM


def test_a_persona_over_the_window_is_refused_before_sending() -> None:
    model = ScriptedModel(["never"], name="claude-sonnet-4-6")
    chat = Chat(model, system="You are very detailed. " * 2_000, store=MemoryStore(),
                context_window=WINDOW, title_model=False, counter=TokenCounter())
    with pytest.raises(ContextTooLongError, match="leave no room"):
        chat.send("hi")
    assert model.requests == []
    assert chat.history()[-1].message.text == "hi", "the user's message is kept"


def test_a_request_that_fits_is_left_alone() -> None:
    model = ScriptedModel(["a", "b"], name="claude-sonnet-4-6")
    chat = Chat(model, store=MemoryStore(), context_window=WINDOW, title_model=False)
    assert chat.send("hello").notes == []
    request = chat.next_request("again")
    assert [m.text for m in request.messages] == ["hello", "a", "again"]


def test_the_window_is_known_per_model_and_overridable() -> None:
    assert window_of(ScriptedModel(["x"], name="claude-sonnet-4-6")) == 200_000
    local = OpenAIModel("smollm2", base_url="http://127.0.0.1:9/v1", environ={}, provider="llamacpp")
    assert window_of(local) == DEFAULT_CONTEXT_WINDOW
    assert Chat(local, store=MemoryStore(), title_model=False).window == DEFAULT_CONTEXT_WINDOW
    assert Chat(local, store=MemoryStore(), title_model=False, context_window=2048).window == 2048


def test_over_the_real_adapter_an_oversized_paste_is_answered_and_so_are_later_turns(
    tmp_path: Path,
) -> None:
    """Through the SDK and HTTP: the oversized paste is sent cut (a body well under the window),
    answered, and the short turns after it are answered too."""
    with FakeAnthropic() as fake:
        model = AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url,
                               environ={}, max_retries=0)
        store = SQLiteStore(tmp_path / "c.db")

        def turn(words: str) -> str:
            chat = Chat(model, store=store, session_id="s", context_window=WINDOW,
                        max_tokens=MAX_TOKENS, title_model=False, counter=TokenCounter())
            before = len(fake.requests)
            body_limit = WINDOW * 4
            fake.enqueue(message(text("fine")))
            reply = chat.send(words)
            sent = fake.requests[before].body
            assert len(json.dumps(sent)) < body_limit, "sent over the window"
            return reply.text

        assert turn("hello") == "fine"
        assert turn("x " * 300_000) == "fine"
        for i in range(5):
            assert turn(f"short {i}") == "fine"


def test_the_async_turn_fits_the_request_too(tmp_path: Path) -> None:
    """The service's path (Chat.asend, the SDK's async client): the same size rule, one turn."""
    import asyncio

    with FakeAnthropic() as fake:
        model = AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url,
                               environ={}, max_retries=0)
        chat = Chat(model, store=SQLiteStore(tmp_path / "c.db"), context_window=WINDOW,
                    max_tokens=MAX_TOKENS, title_model=False, counter=TokenCounter())
        fake.enqueue(message(text("fine")), message(text("still fine")))
        reply = asyncio.run(chat.asend("x " * 300_000))
        assert any("cut" in n and "context window" in n for n in reply.notes), reply.notes
        assert len(json.dumps(fake.requests[0].body)) < WINDOW * 4, "sent over the window"
        assert asyncio.run(chat.asend("short")).text == "still fine"
