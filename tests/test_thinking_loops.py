"""Extended thinking across tool loops that did not end cleanly (bound6 F5).

The API's rule (extended-thinking page, "Preserving thinking blocks"): with thinking on, the
last assistant message before the lastmost set of tool_use/tool_result blocks must start with
its thinking block, unmodified. A user message that carries tool results is such a set even
when it also carries the user's words: a reply cut by max_tokens in the middle of a tool call
(not run, answered "not run"), then a new message. The strict fake (tests/fake_anthropic.py)
enforces the rule; every request here goes through it. The stored log is shared by all store
kinds, so each case runs on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from colloquy import Chat
from colloquy.context.thinking import loop_start
from colloquy.messages import (
    ContentBlock, Message, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock,
)
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.openai import OpenAIModel
from colloquy.store import Store
from colloquy.tools import tool
from fake_anthropic import FakeAnthropic, message, text, thinking, tool_use
from fake_openai import FakeOpenAI, ToolCall, Turn


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"result for {q}"


def _chat(fake: FakeAnthropic, store: Store, thinking_budget: int | None = 2048) -> Chat:
    model = AnthropicModel("claude-sonnet-4-6", api_key="sk-ant-test", base_url=fake.base_url,
                           max_retries=0)
    return Chat(model, store=store, session_id="s", title_model=False, tools=[lookup],
                thinking=thinking_budget, max_tokens=4096)


def _assistant_before_results(body: dict[str, object]) -> list[dict[str, object]]:
    """The content of the last assistant message of a sent request body."""
    messages = body["messages"]
    assert isinstance(messages, list)
    return [m for m in messages if m["role"] == "assistant"][-1]["content"]  # type: ignore[no-any-return]


def test_a_reply_cut_mid_tool_use_keeps_its_thinking_for_the_next_turns(
        fake: FakeAnthropic, store: Store) -> None:
    fake.enqueue(message(thinking("plan"), tool_use("toolu_9", "lookup", {}),
                         stop_reason="max_tokens"))
    first = _chat(fake, store).send("q")
    assert any("not run" in n for n in first.notes)
    for i in range(3):
        fake.enqueue(message(thinking("ok"), text(f"fine {i}")))
        reply = _chat(fake, store).send(f"next {i}")  # a fresh Chat reads the log back
        assert reply.text == f"fine {i}"
        body = fake.requests[-1].body
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    second = fake.requests[1].body
    # The cut reply's thinking went back first, then the "not run" result with the new words.
    assert _assistant_before_results(second)[0] == thinking("plan")
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"
    # Once a turn ended with an answer, the loop is finished: its thinking is left out.
    last = fake.requests[-1].body
    assert not any(b["type"] == "thinking" for m in last["messages"][:-2] for b in m["content"])


def test_a_tool_round_then_a_reply_cut_while_thinking(fake: FakeAnthropic, store: Store) -> None:
    fake.enqueue(message(thinking("need it"), tool_use("toolu_1", "lookup", {"q": "a"}),
                         stop_reason="tool_use"),
                 message(thinking("half a thou"), stop_reason="max_tokens"))
    _chat(fake, store).send("q")
    fake.enqueue(message(thinking("fine"), text("answer")))
    reply = _chat(fake, store).send("go on")
    assert reply.text == "answer"
    body = fake.requests[-1].body
    assert _assistant_before_results(body)[0] == thinking("need it")
    # The thinking-only reply is not replayed: its user messages around it are one.
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]


def test_a_call_cut_on_another_provider_turns_thinking_off_with_a_note(
        fake: FakeAnthropic, store: Store) -> None:
    fake.enqueue(message(thinking("p"), tool_use("toolu_1", "lookup", {"q": "a"}),
                         stop_reason="tool_use"),
                 message(thinking("d"), text("done")))
    assert _chat(fake, store).send("claude").text == "done"
    with FakeOpenAI() as other:
        other.push(Turn(tool_calls=[ToolCall("c1", "lookup", '{"q": "a')], finish_reason="length"))
        local = OpenAIModel("smol", api_key="k", base_url=other.base_url, provider="llamacpp",
                            max_retries=0)
        Chat(local, store=store, session_id="s", title_model=False, tools=[lookup]).send("local")
    fake.enqueue(message(text("fine")))
    reply = _chat(fake, store).send("back to claude")
    assert reply.text == "fine"
    assert "thinking" not in fake.requests[-1].body
    assert any("thinking off for this call" in n for n in reply.notes)
    fake.enqueue(message(thinking("x"), text("again")))
    assert _chat(fake, store).send("and on").text == "again"  # the loop is over: thinking back
    assert fake.requests[-1].body["thinking"]["type"] == "enabled"


def _user(*blocks: object) -> Message:
    return Message.rebuilt("user", list(blocks))


def _asst(*blocks: object) -> Message:
    return Message.rebuilt("assistant", list(blocks))


def test_loop_start_reads_the_request_as_the_api_does() -> None:
    th = ThinkingBlock(thinking="t", signature="s")
    use = ToolUseBlock(id="toolu_1", name="lookup", input={})
    result = ToolResultBlock(tool_use_id="toolu_1", content="r")
    q, nxt = TextBlock(text="q"), TextBlock(text="next")
    cases: list[tuple[list[Message], int]] = [
        ([_user(q), _asst(th, TextBlock(text="a")), _user(nxt)], 2),  # a finished turn
        ([_user(q), _asst(th, use), _user(result), _user(nxt)], 0),  # cut call, new words
        ([_user(q), _asst(th, use), _user(result, nxt)], 0),  # the same, one message
        ([_user(q), _asst(th, use), _user(nxt)], 0),  # no result stored: the repair adds one
        ([_user(q), _asst(th, use), _user(result), _asst(th), _user(nxt)], 0),  # cut thinking
        ([_user(q), _asst(th, TextBlock(text="a")), _user(result, nxt)], 2),  # orphan result
        ([_asst(th, use), _user(nxt)], 1),  # the window cut the user's message away
        # a blank user message (stored before the entry rules, or imported) vanishes from the
        # request: the assistant messages around it merge, so the loop began before it
        ([_user(q), _asst(TextBlock(text="a")), _user(TextBlock(text=" ")), _asst(th, use)], 0),
        ([_user(q), _asst(th, use), _user(TextBlock(text=" \n")), _user(result)], 0),
    ]
    for messages, start in cases:
        assert loop_start(len(messages), messages.__getitem__) == start, messages



_USE_1 = ToolUseBlock(id="toolu_1", name="lookup", input={"q": "x"})
_PLAN = ThinkingBlock(thinking="plan", signature="sig_1")


@pytest.mark.parametrize("first, between, second", [
    # a blank user message between a finished reply and a reply cut mid tool_use: the merged
    # message would start with text (found by test_repair_fuzz)
    ([TextBlock(text="hello")], [TextBlock(text=" ")], [_PLAN, _USE_1]),
    # between a reply cut mid tool_use and a reply that starts with thinking: it would start
    # with the tool_use (CI's fuzz run)
    ([_USE_1], [TextBlock(text=" ")], [_PLAN, TextBlock(text="hi")]),
    # another message the repair drops: only the result of a call no reply made (CI's fuzz run
    # after the blank-message fix)
    ([ToolUseBlock(id="toolu_2", name="lookup", input={"q": "x"})],
     [ToolResultBlock(tool_use_id="toolu_1", content="r")], [_PLAN, TextBlock(text="hi")]),
], ids=["blank-before-loop", "blank-before-thinking", "orphan-result"])
def test_a_message_the_repair_drops_between_two_replies_never_breaks_the_loop(
        fake: FakeAnthropic, store: Store, first: list[ContentBlock], between: list[ContentBlock],
        second: list[ContentBlock]) -> None:
    """A stored message the repair drops (stored before the entry rules, or imported) makes the
    replies around it merge into one that does not start with the loop's thinking block. With
    thinking on the API refuses that: thinking is turned off for the call, with a note."""
    from colloquy.store import NewMessage

    store.create_conversation(id="s")
    store.append("s", [NewMessage(message=Message.rebuilt(role, blocks)) for role, blocks in [
        ("user", [TextBlock(text="hi")]), ("assistant", first), ("user", between),
        ("assistant", second)]], expected_seq=0)
    fake.enqueue(message(text("done")))
    reply = _chat(fake, store).send("go on")
    assert reply.text == "done"  # the strict fake took the request
    assert "thinking" not in fake.requests[-1].body
    assert any("thinking off" in n for n in reply.notes)
