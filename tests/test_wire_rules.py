"""The providers' own rules for a request (colloquy.context.wire), enforced once by the request
repair every adapter's request goes through, and a conversation moved between providers.

The fakes (tests/fake_anthropic.py, tests/fake_openai.py) refuse what the real APIs refuse, so
a request that would be rejected in production is rejected here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, message, request_problem, stream, text, tool_use
from fake_openai import FakeOpenAI, ToolCall, Turn
from fake_openai import request_problem as openai_problem

from colloquy import Chat, MemoryStore, ScriptedModel, tool
from colloquy.context import problems, repair, repair_request, validate
from colloquy.context.wire import MAX_BREAKPOINTS, count_breakpoints, valid_tool_id
from colloquy.errors import InvalidConversationError
from colloquy.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.openai_shape import to_openai_messages
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.base import ModelRequest
from colloquy.models.openai import OpenAIModel
from colloquy.store import Store

U = Message.user
A = Message.assistant
EPHEMERAL = {"type": "ephemeral"}


def call(tool_id: str, name: str = "lookup") -> Message:
    return Message(role="assistant", content=[ToolUseBlock(id=tool_id, name=name, input={"q": "a"})])


def answer(tool_id: str) -> Message:
    return Message(role="user", content=[ToolResultBlock(tool_use_id=tool_id, content="result")])


#: A log recorded with a llama.cpp/vLLM-style server: the same id in every turn.
LLAMA_LOG = [U("first"), call("functions.lookup:0"), answer("functions.lookup:0"), A("found it"),
             U("second"), call("functions.lookup:0"), answer("functions.lookup:0"), A("found it"),
             U("third")]


def pairs(messages: list[Message]) -> list[tuple[str, str]]:
    """(tool_use id, the id of the tool_result right after it), for every call."""
    out = []
    for i, m in enumerate(messages):
        for u, r in zip(m.tool_uses, messages[i + 1].tool_results if i + 1 < len(messages) else []):
            out.append((u.id, r.tool_use_id))
    return out


# -- tool-call ids -------------------------------------------------------------------------------


def test_ids_from_another_provider_are_named_problems() -> None:
    found = problems(LLAMA_LOG)
    assert any("does not match" in p and "functions.lookup:0" in p for p in found), found
    assert any("not unique" in p for p in found), found
    with pytest.raises(InvalidConversationError):
        validate(LLAMA_LOG)


def test_repair_maps_ids_so_each_call_and_its_result_agree() -> None:
    msgs, _, notes = repair(LLAMA_LOG, [[i] for i in range(1, 10)])
    assert problems(msgs) == []
    ids = [u.id for m in msgs for u in m.tool_uses]
    assert len(ids) == len(set(ids)) == 2 and all(valid_tool_id(i) for i in ids)
    assert all(u == r for u, r in pairs(msgs)), pairs(msgs)
    assert any("ids every provider accepts" in n for n in notes)
    assert LLAMA_LOG[1].tool_uses[0].id == "functions.lookup:0", "the stored log is untouched"


def test_the_mapping_is_stable_as_the_conversation_grows() -> None:
    # The prompt cache needs the same bytes for the same prefix from one turn to the next.
    before, _, _ = repair(LLAMA_LOG)
    grown = [*LLAMA_LOG, call("functions.lookup:0"), answer("functions.lookup:0"), A("again"),
             U("fourth")]
    after, _, _ = repair(grown)
    assert after[: len(before)] == before
    assert repair(grown)[0] == after, "deterministic"
    assert len({u.id for m in after for u in m.tool_uses}) == 3


def test_valid_unique_ids_are_sent_unchanged() -> None:
    log = [U("q"), call("toolu_01A09q90qw90lq917835lq9"), answer("toolu_01A09q90qw90lq917835lq9"),
           A("ok"), U("q2"), call("call_abc-DEF_123"), answer("call_abc-DEF_123"), A("ok")]
    msgs, _, notes = repair(log)
    assert msgs == log and not any("ids" in n for n in notes)


@pytest.mark.parametrize("raw", [
    "functions.lookup:0", "call 1", "x" * 41, "fc_0f0e50a1476a6c35006912c58dc9f8819192c25864eb16f07f",
    "ид-1", "", "a|b", "tool/use#1",
])
def test_any_stored_id_becomes_one_every_provider_accepts(raw: str) -> None:
    msgs, _, _ = repair([U("q"), call(raw), answer(raw), A("done"), U("next")])
    new = msgs[1].tool_uses[0].id
    assert valid_tool_id(new) and len(new) <= 40
    assert msgs[2].tool_results[0].tool_use_id == new
    assert problems(msgs) == []


def test_two_long_ids_with_one_prefix_stay_apart() -> None:
    a, b = "p" * 45 + "1", "p" * 45 + "2"
    msgs, _, _ = repair([U("q"), Message(role="assistant", content=[
        ToolUseBlock(id=a, name="f"), ToolUseBlock(id=b, name="f")]),
        Message(role="user", content=[ToolResultBlock(tool_use_id=b, content="B"),
                                      ToolResultBlock(tool_use_id=a, content="A")])])
    uses = {u.id: u for u in msgs[1].tool_uses}
    assert len(uses) == 2
    by_content = {r.content: r.tool_use_id for r in msgs[2].tool_results}
    assert by_content["A"] == msgs[1].tool_uses[0].id and by_content["B"] == msgs[1].tool_uses[1].id


def test_a_repeated_id_inside_one_message_pairs_results_in_order() -> None:
    msgs, _, _ = repair([U("q"), Message(role="assistant", content=[
        ToolUseBlock(id="call_0", name="f", input={"n": 1}),
        ToolUseBlock(id="call_0", name="f", input={"n": 2})]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="call_0", content="one"),
                                      ToolResultBlock(tool_use_id="call_0", content="two")])])
    assert problems(msgs) == []
    first, second = msgs[1].tool_uses
    assert [r.tool_use_id for r in msgs[2].tool_results] == [first.id, second.id]


# -- cache breakpoints, whitespace, prefill ------------------------------------------------------


def marked(text_: str) -> TextBlock:
    return TextBlock(text=text_, cache_control=EPHEMERAL)


def test_more_than_four_breakpoints_is_a_problem_and_repair_keeps_the_latest() -> None:
    system = [marked("persona")]
    msgs = [Message(role="user", content=[marked(f"doc {i}")]) if i % 2 == 0 else A(f"r{i}")
            for i in range(9)]
    assert count_breakpoints(system, msgs) == 6
    assert any("6 cache_control breakpoints" in p for p in problems(msgs, system))
    new_system, new_msgs, _, notes = repair_request(system, msgs)
    assert count_breakpoints(new_system, new_msgs) == MAX_BREAKPOINTS
    assert new_system[0].cache_control is None, "the oldest mark goes first"
    kept = [m.text for m in new_msgs if m.content[0].cache_control]
    assert kept == ["doc 2", "doc 4", "doc 6", "doc 8"]
    assert problems(new_msgs, new_system) == []
    assert any("latest 4 cache breakpoints" in n for n in notes)


def test_breakpoints_inside_tool_results_count_too() -> None:
    result = ToolResultBlock(tool_use_id="t", content=[marked("a"), marked("b")], cache_control=EPHEMERAL)
    msgs = [Message(role="user", content=[marked("q"), marked("q2")]), call("t"),
            Message(role="user", content=[result])]
    assert count_breakpoints([], msgs) == 5
    _, fixed, _, _ = repair_request([], msgs)
    assert count_breakpoints([], fixed) == 4
    assert fixed[0].content[0].cache_control is None and fixed[0].content[1].cache_control


def test_whitespace_only_system_blocks_are_dropped_from_the_request() -> None:
    system = [TextBlock(text="  \n"), TextBlock(text="Be brief.")]
    assert problems([U("hi")], system) == ["system block 0 has no non-whitespace text"]
    new_system, _, _, notes = repair_request(system, [U("hi")])
    assert new_system == [TextBlock(text="Be brief.")]
    assert "dropped a whitespace-only system block" in notes


def test_whitespace_text_inside_a_tool_result_is_dropped() -> None:
    msgs = [U("q"), call("t"), Message(role="user", content=[ToolResultBlock(
        tool_use_id="t", content=[TextBlock(text=" "), TextBlock(text="data")])])]
    assert any("tool_result" in p for p in problems(msgs))
    fixed, _, _ = repair(msgs)
    assert fixed[2].tool_results[0].content == [TextBlock(text="data")]
    assert problems(fixed) == []


def test_a_prefill_loses_its_trailing_whitespace() -> None:
    msgs = [U("Write a haiku."), A("Here it is:\n ")]
    assert any("ends with whitespace" in p for p in problems(msgs))
    fixed, _, notes = repair(msgs)
    assert fixed[-1].text == "Here it is:"
    assert problems(fixed) == [] and notes
    assert problems([U("q"), A("a "), U("q2")]) == [], "only the final assistant message counts"


# -- every request a chat builds obeys them -----------------------------------------------------


def test_a_chat_never_sends_more_than_four_breakpoints_or_a_blank_persona() -> None:
    model = ScriptedModel([f"r{i}" for i in range(6)], name="claude-sonnet-4-6")
    chat = Chat(model, system=" \n ", store=MemoryStore(), title_model=False)
    for i in range(6):
        chat.send([TextBlock(text=f"doc {i} " + "data " * 50, cache_control=EPHEMERAL)])
    for req in model.requests:
        body = req.to_anthropic()
        assert request_problem(body) is None, request_problem(body)
        assert "system" not in body


def test_the_fakes_refuse_what_the_apis_refuse() -> None:
    bad = ModelRequest(model="claude-sonnet-4-6", messages=LLAMA_LOG).to_anthropic()
    assert "String should match pattern" in (request_problem(bad) or "")
    dup = [U("q"), call("a"), answer("a"), A("ok"), U("q"), call("a"), answer("a")]
    assert "must be unique" in (request_problem(ModelRequest(model="m", messages=dup).to_anthropic()) or "")
    five = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": f"d{i}", "cache_control": EPHEMERAL}
                                     for i in range(5)]}]}
    assert "A maximum of 4 blocks with cache_control" in (request_problem(five) or "")
    long_id = "x" * 41
    oa = to_openai_messages("", [U("q"), call(long_id), answer(long_id)])
    assert "string too long" in (openai_problem({"messages": oa}) or ("",))[0]
    unanswered = to_openai_messages("", [U("q"), call("c1"), U("next")])
    assert "must be followed by tool messages" in (openai_problem({"messages": unanswered}) or ("",))[0]


# -- Claude -> OpenAI-compatible -> Claude, with tool rounds, over the real SDKs ------------------


@pytest.fixture
def fakes() -> Iterator[tuple[FakeAnthropic, FakeOpenAI]]:
    with FakeAnthropic() as claude, FakeOpenAI(tool_call_ids="functions") as local:
        yield claude, local


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"result for {q}"


def _claude(fake: FakeAnthropic) -> AnthropicModel:
    return AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url, environ={},
                          max_retries=0)


def _local(fake: FakeOpenAI) -> OpenAIModel:
    return OpenAIModel("smollm", base_url=fake.base_url, environ={}, provider="llamacpp",
                       max_retries=0)


def _anthropic_tool_ids(body: dict[str, Any]) -> list[str]:
    return [b["id"] for m in body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == "tool_use"]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_conversation_moves_between_providers_with_tool_rounds(
    fakes: tuple[FakeAnthropic, FakeOpenAI], streaming: bool, tmp_path: Any
) -> None:
    claude_fake, local_fake = fakes
    store: Store = MemoryStore()

    def turn(model: Any, text_: str) -> str:
        chat = Chat(model, tools=[lookup], store=store, session_id="s", title_model=False)
        if not streaming:
            return chat.send(text_).text
        return [e for e in chat.stream(text_) if not isinstance(e, str)][-1].text  # type: ignore[union-attr]

    reply = stream if streaming else message
    claude_fake.enqueue(
        reply(text("Let me look."), tool_use("toolu_01", "lookup", {"q": "a"}), stop_reason="tool_use"),
        reply(text("Claude found it.")))
    assert turn(_claude(claude_fake), "first") == "Claude found it."

    for _ in range(2):  # two local turns: the server says functions.lookup:0 both times
        local_fake.push(Turn(tool_calls=[ToolCall(id="call_x", name="lookup", arguments='{"q": "b"}')]),
                        Turn(text="local found it"))
        assert turn(_local(local_fake), "local question") == "local found it"
    stored_ids = [u.id for sm in store.load("s") for u in sm.message.tool_uses]
    assert stored_ids == ["toolu_01", "functions.lookup:0", "functions.lookup:0"], "the log keeps them"

    claude_fake.enqueue(
        reply(tool_use("toolu_02", "lookup", {"q": "c"}), stop_reason="tool_use"),
        reply(text("Back on Claude.")))
    assert turn(_claude(claude_fake), "back to claude") == "Back on Claude."

    for req in claude_fake.requests:
        assert request_problem(req.body) is None
    last = claude_fake.requests[-1].body
    ids = _anthropic_tool_ids(last)
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    for req in local_fake.requests:
        assert openai_problem(req.body) is None
        sent = [c["id"] for m in req.body["messages"] for c in m.get("tool_calls") or []]
        assert len(sent) == len(set(sent))
    # What the local server was sent replays Claude's first call as is.
    assert "toolu_01" in json.dumps(local_fake.requests[-1].body)


# -- text that is not valid Unicode, already stored ------------------------------------------------


def test_no_message_or_system_block_can_hold_a_lone_surrogate() -> None:
    """The text rule is kept by the value types themselves (colloquy.text), so a request never
    needs a pass of its own: every way of building a block replaces a lone surrogate."""
    msgs = [U("I love \ud83d pizza"), A("Pizza!"), U("toppings?")]
    assert msgs[0].text == "I love \ufffd pizza"
    system, fixed, _, _ = repair_request([TextBlock(text="be \udc00 brief")], msgs)
    assert system[0].text == "be \ufffd brief" and problems(fixed, system) == []
    tool_msgs = [U("q"), Message(role="assistant", content=[
        ToolUseBlock(id="t", name="f", input={"q": "\ud800", "n": [1, "\udfff"]})]), answer("t")]
    assert tool_msgs[1].tool_uses[0].input == {"q": "\ufffd", "n": [1, "\ufffd"]}
    from_json = Message.model_validate(json.loads('{"role": "user", "content": "a \\ud83d b"}'))
    assert from_json.text == "a \ufffd b"
    json.dumps(from_json.model_dump(), ensure_ascii=False).encode("utf-8")  # encodes


def test_old_data_with_a_lone_surrogate_reaches_the_provider(tmp_path: Any) -> None:
    from colloquy.store import NewMessage, SQLiteStore

    store = SQLiteStore(tmp_path / "old.db")
    store.create_conversation(id="s", persona="")
    # Written as an older colloquy (or a broken import) could have stored it.
    store.append("s", [NewMessage(message=U("I love \ud83d pizza")), NewMessage(message=A("Yes."))])
    with FakeAnthropic() as fake:
        fake.enqueue(message(text("fine")), message(text("still fine")))
        model = _claude(fake)
        chat = Chat(model, store=store, session_id="s", title_model=False)
        assert chat.send("what toppings?").text == "fine"
        assert "\ufffd" in json.dumps(fake.requests[-1].body, ensure_ascii=False)
        assert chat.send("hello?").text == "still fine"
