"""Tools: schemas inferred from typed functions, failures reported to the model as is_error
results, and the chat's tool loop (tool_use -> tool_result rounds until the model stops)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import pytest
from pydantic import Field

from colloquy import Chat, Reply, Tool, tool
from colloquy.context import problems
from colloquy.errors import ColloquyError, ToolError
from colloquy.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.models import FunctionModel, ModelRequest, ScriptedModel, tool_call
from colloquy.models.base import ToolSpec
from colloquy.store import Store
from colloquy.tokens import TokenCounter
from colloquy.tools import as_tools, run_calls


def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


def boom(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"exploded: {reason}")


# -- Tool ------------------------------------------------------------------------------------------


def test_schema_and_description_come_from_the_function() -> None:
    t = Tool.from_function(add)
    assert t.name == "add" and t.description == "Add two integers."
    schema = t.input_schema
    assert schema["type"] == "object"
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"] == {"default": 0, "title": "B", "type": "integer"}
    assert schema["required"] == ["a"]
    assert schema.get("additionalProperties") is False
    assert "title" not in schema
    spec = t.spec
    assert spec.to_anthropic() == {"name": "add", "description": "Add two integers.", "input_schema": schema}
    assert spec.to_openai()["function"]["parameters"] == schema


def test_the_decorator_with_and_without_arguments() -> None:
    @tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    @tool(name="whisper", description="Lower-case the text.")
    def quiet(text: str) -> str:
        return text.lower()

    assert isinstance(shout, Tool) and shout.name == "shout"
    assert shout.description == "Upper-case the text."
    assert (quiet.name, quiet.description) == ("whisper", "Lower-case the text.")
    assert quiet.run(tool_call("whisper", {"text": "HeLLo"}, id="t")) == ToolResultBlock(
        tool_use_id="t", content="hello")


def test_run_returns_text_and_serialises_other_values() -> None:
    assert Tool.from_function(add).run(tool_call("add", {"a": 2, "b": 3}, id="x")) == ToolResultBlock(
        tool_use_id="x", content="5")

    def info(city: str) -> dict[str, Any]:
        return {"city": city, "temp": 21.5, "tags": ["sunny"]}

    out = Tool.from_function(info).run(tool_call("info", {"city": "Oslo"}))
    assert not out.is_error
    assert json.loads(out.text) == {"city": "Oslo", "temp": 21.5, "tags": ["sunny"]}


def test_an_exception_becomes_an_error_result() -> None:
    out = Tool.from_function(boom).run(tool_call("boom", {"reason": "sparks"}, id="b"))
    assert out.is_error and out.tool_use_id == "b"
    assert out.text == "RuntimeError: exploded: sparks"


@pytest.mark.parametrize("bad", [{}, {"a": "not a number"}, {"a": 1, "c": 2}, {"b": 1}])
def test_bad_input_becomes_an_error_result(bad: dict[str, Any]) -> None:
    calls: list[Any] = []

    def tracked(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    out = Tool.from_function(tracked).run(ToolUseBlock(id="t", name="tracked", input=bad))
    assert out.is_error
    assert out.text.startswith("invalid input for tracked")
    assert calls == [], "the function never runs on invalid input"


def test_input_is_validated_and_coerced_by_the_signature() -> None:
    out = Tool.from_function(add).run(tool_call("add", {"a": "4", "b": 1.0}))
    assert out == ToolResultBlock(tool_use_id=out.tool_use_id, content="5")


def test_misconfigured_tools_raise_tool_error() -> None:
    def variadic(*args: int) -> int:
        return sum(args)

    def kw(**kwargs: Any) -> str:
        return "x"

    for fn in (variadic, kw):
        with pytest.raises(ToolError):
            Tool.from_function(fn)
    with pytest.raises(ToolError, match="two tools are named 'add'"):
        as_tools([add, Tool.from_function(add)])
    assert isinstance(ToolError("x"), ColloquyError)


def test_a_hand_written_schema_takes_kwargs_as_given() -> None:
    def kw(**kwargs: Any) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))

    t = Tool(name="kw", description="anything", fn=kw,
             input_schema={"type": "object", "properties": {"x": {"type": "string"}}})
    assert t.run(tool_call("kw", {"x": "1", "y": 2})).text == "x=1,y=2"


def test_run_calls_answers_every_call_in_order_and_unknown_names_get_an_error() -> None:
    tools = as_tools([add, boom])
    calls = [tool_call("add", {"a": 1}, id="1"), tool_call("nope", {}, id="2"),
             tool_call("boom", {"reason": "r"}, id="3")]
    results = run_calls(tools, calls)
    assert [r.tool_use_id for r in results] == ["1", "2", "3"]
    assert [r.is_error for r in results] == [False, True, True]
    assert results[1].text == "no tool named 'nope'; available: add, boom"
    assert run_calls({}, [tool_call("x", id="9")])[0].text == "no tool named 'x'; available: none"


# -- the chat's tool loop --------------------------------------------------------------------------


def chat_with(store: Store, model: Any, tools: list[Any], **kw: Any) -> Chat:
    return Chat(model, store=store, session_id="s", tools=tools, counter=TokenCounter(), **kw)


def test_one_tool_round_then_the_answer(store: Store) -> None:
    call = tool_call("add", {"a": 2, "b": 3})
    model = ScriptedModel([[TextBlock(text="Let me add."), call], "2 + 3 = 5"])
    chat = chat_with(store, model, [add])
    reply = chat.send("what is 2 + 3?")
    assert reply.text == "2 + 3 = 5" and reply.rounds == 2 and reply.seq == 4
    # Every block is persisted, in order.
    log = store.load("s")
    assert [sm.message for sm in log] == [
        Message.user("what is 2 + 3?"),
        Message(role="assistant", content=[TextBlock(text="Let me add."), call]),
        Message(role="user", content=[ToolResultBlock(tool_use_id=call.id, content="5")]),
        Message.assistant("2 + 3 = 5"),
    ]
    assert log[1].usage is not None and log[1].meta["stop_reason"] == "tool_use"
    assert log[2].usage is None, "tool results are not model output"
    assert log[3].usage is not None
    # The model was told about the tool, and saw the result in the second request.
    first, second = model.requests
    assert [t.name for t in first.tools] == ["add"]
    assert first.tools[0].input_schema == Tool.from_function(add).input_schema
    assert second.messages[-1].tool_results == [ToolResultBlock(tool_use_id=call.id, content="5")]
    assert problems(second.messages) == []


def test_several_rounds_with_parallel_calls(store: Store) -> None:
    r1 = [tool_call("add", {"a": 1, "b": 1}), tool_call("add", {"a": 2, "b": 2})]
    r2 = tool_call("add", {"a": 2, "b": 4})
    model = ScriptedModel([r1, r2, "the total is 6"])
    chat = chat_with(store, model, [add])
    reply = chat.send("add things")
    assert reply.rounds == 3 and reply.text == "the total is 6"
    log = [sm.message for sm in store.load("s")]
    assert [m.role for m in log] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert [r.text for r in log[2].tool_results] == ["2", "4"]
    assert [r.tool_use_id for r in log[2].tool_results] == [c.id for c in r1]
    assert [r.text for r in log[4].tool_results] == ["6"]
    for req in model.requests:
        assert problems(req.messages) == []
    # Usage is summed over the three calls of the turn.
    usages = [sm.usage for sm in store.load("s") if sm.usage]
    assert len(usages) == 3
    assert reply.usage.output_tokens == sum(u.output_tokens for u in usages)
    assert reply.usage.input_tokens == sum(u.input_tokens for u in usages)
    assert [t.seq for t in chat.cost().turns] == [2, 4, 6]


def test_a_failing_tool_is_reported_to_the_model_and_the_turn_goes_on(store: Store) -> None:
    call = tool_call("boom", {"reason": "disk full"})
    model = ScriptedModel([call, "Sorry, the tool failed."])
    reply = chat_with(store, model, [boom, add]).send("try it")
    assert reply.text == "Sorry, the tool failed."
    result = store.load("s")[2].message.tool_results[0]
    assert result.is_error and result.text == "RuntimeError: exploded: disk full"
    assert model.requests[1].messages[-1].tool_results == [result]


def test_bad_input_from_the_model_becomes_an_error_result(store: Store) -> None:
    call = tool_call("add", {"a": "many"})
    model = ScriptedModel([call, tool_call("add", {"a": 1}), "fixed it"])
    reply = chat_with(store, model, [add]).send("add")
    assert reply.text == "fixed it" and reply.rounds == 3
    first, second = (sm.message.tool_results[0] for sm in store.load("s")[2:5:2])
    assert first.is_error and "invalid input for add" in first.text
    assert not second.is_error and second.text == "1"


def test_an_unknown_tool_name_gets_an_error_result(store: Store) -> None:
    call = tool_call("subtract", {"a": 1})
    model = ScriptedModel([call, "I will use add instead."])
    reply = chat_with(store, model, [add]).send("subtract")
    assert reply.text == "I will use add instead."
    result = store.load("s")[2].message.tool_results[0]
    assert result.is_error and result.tool_use_id == call.id
    assert "no tool named 'subtract'; available: add" == result.text


def always_calls(counter: dict[str, int]) -> FunctionModel:
    def respond(req: ModelRequest) -> list[Any]:
        counter["model"] += 1
        return [tool_call("count")]

    return FunctionModel(respond)


def test_max_tool_rounds_is_enforced_with_tool_error(store: Store) -> None:
    n = {"model": 0, "tool": 0}

    def count() -> int:
        n["tool"] += 1
        return n["tool"]

    chat = chat_with(store, always_calls(n), [count], max_tool_rounds=3)
    with pytest.raises(ToolError, match="after 3 rounds"):
        chat.send("loop forever")
    assert n["tool"] == 3, "no more than max_tool_rounds rounds of tools run"
    assert n["model"] == 4, "the model got the 3rd round's results, and asked again"
    log = [sm.message for sm in store.load("s")]
    # Every call is stored and answered: the log is a valid conversation as it stands.
    assert problems(log) == []
    assert log[-1].role == "user" and all(r.is_error for r in log[-1].tool_results)
    assert sum(1 for m in log if m.tool_uses) == 4
    # The next turn starts from a sendable request.
    model = ScriptedModel(["ok, stopping"])
    chat2 = chat_with(store, model, [count], max_tool_rounds=3)
    assert chat2.send("stop now").text == "ok, stopping"
    assert problems(model.last_request.messages) == []


def test_exactly_max_tool_rounds_is_allowed(store: Store) -> None:
    model = ScriptedModel([tool_call("add", {"a": 1}), tool_call("add", {"a": 2}), "done"])
    reply = chat_with(store, model, [add], max_tool_rounds=2).send("go")
    assert reply.text == "done" and reply.rounds == 3


def test_max_tool_rounds_zero_runs_no_tool(store: Store) -> None:
    n = {"model": 0, "tool": 0}

    def count() -> int:
        n["tool"] += 1
        return n["tool"]

    with pytest.raises(ToolError):
        chat_with(store, always_calls(n), [count], max_tool_rounds=0).send("go")
    assert n == {"model": 1, "tool": 0}
    assert problems([sm.message for sm in store.load("s")]) == []


def test_a_tool_call_without_tools_ends_the_turn_and_the_next_turn_is_valid(store: Store) -> None:
    call = tool_call("add", {"a": 1})
    model = ScriptedModel([call, "plain answer"])
    chat = chat_with(store, model, [])
    reply = chat.send("q")
    assert reply.message.tool_uses == [call] and reply.stop_reason == "tool_use"
    chat.send("q2")
    last = model.last_request.messages[-1]
    assert last.tool_results[0].tool_use_id == call.id and last.tool_results[0].is_error
    assert last.content[-1] == TextBlock(text="q2")
    assert problems(model.last_request.messages) == []


def test_streaming_through_tool_rounds(store: Store) -> None:
    model = ScriptedModel([[TextBlock(text="Adding now. "), tool_call("add", {"a": 40, "b": 2})],
                           "The answer is 42."])
    events = list(chat_with(store, model, [add]).stream("6 * 7?"))
    *deltas, reply = events
    assert isinstance(reply, Reply) and reply.rounds == 2
    assert all(isinstance(d, str) for d in deltas)
    assert "".join(deltas) == "Adding now. The answer is 42."
    assert reply.text == "The answer is 42."


def test_a_process_that_died_mid_tool_leaves_a_log_the_next_turn_can_send(store: Store) -> None:
    """The tool call is stored before the tool runs; a crash then leaves it unanswered."""
    from colloquy.store import NewMessage

    store.create_conversation(id="s")
    call = tool_call("add", {"a": 1})
    store.append("s", [NewMessage(message=Message.user("q")),
                       NewMessage(message=Message(role="assistant", content=[call]))])
    model = ScriptedModel(["answer"])
    reply = chat_with(store, model, [add]).send("still there?")
    assert reply.text == "answer"
    req = model.last_request
    assert problems(req.messages) == []
    assert req.messages[-1].tool_results[0].is_error
    assert "interrupted" in req.messages[-1].tool_results[0].text
    assert any("interrupted" in n for n in reply.notes)


# -- the text rule and the name rule, where a tool is declared ---------------------------------


def lookup(q: str) -> str:
    return "r"


def lookup_field(q: Annotated[str, Field(description="the qu\udce9ry\x00")]) -> str:
    return "r"


def test_a_tools_text_follows_the_text_rule_so_every_turn_reaches_the_provider(store: Store) -> None:
    """A lone surrogate in a description or a schema's text (a docstring read with
    surrogateescape, a Field description) is U+FFFD in what the provider gets, every turn."""
    import fake_anthropic as F
    from colloquy.models.anthropic import AnthropicModel

    described = tool(lookup, description="caf\udce9 menu")
    assert described.description == "caf\ufffd menu"
    field = tool(lookup_field)
    assert field.input_schema["properties"]["q"]["description"] == "the qu\ufffdry\ufffd"
    with F.FakeAnthropic() as fake:
        model = AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url,
                               max_retries=0)
        for t in (described, field):
            for _ in range(2):
                fake.enqueue(F.message(F.text("fine")))
                chat = Chat(model, store=store, session_id=t.name, title_model=False, tools=[t])
                assert chat.send("hi").text == "fine"
        sent = [r.body["tools"][0] for r in fake.requests]
    assert len(sent) == 4
    assert sent[0]["description"] == "caf\ufffd menu"
    assert sent[2]["input_schema"]["properties"]["q"]["description"] == "the qu\ufffdry\ufffd"


@pytest.mark.parametrize("name", ["bad name", "x" * 65, "caf\udce9", "f/g"])
def test_a_tool_name_the_apis_refuse_is_a_tool_error_where_it_is_declared(name: str) -> None:
    with pytest.raises(ToolError, match="a tool name is 1 to 64"):
        tool(lookup, name=name)
    with pytest.raises(ToolError, match="a tool name is 1 to 64"):
        Tool(name=name, description="d", fn=lookup)
    with pytest.raises(ToolError, match="deeper than 64"):
        Tool(name="ok", description="d", fn=lookup,
             input_schema={"type": "object", "x": json.loads("[" * 80 + "]" * 80)})


def test_a_tool_spec_cleans_its_text_on_every_construction_path() -> None:
    spec = ToolSpec(name="f", description="d\udce9",
                    input_schema={"type": "object", "properties": {"k\ud800": {"title": "\x00"}}})
    assert spec.description == "d\ufffd"
    assert spec.input_schema["properties"] == {"k\ufffd": {"title": "\ufffd"}}
    server = ToolSpec.from_anthropic({"type": "web_search_20250305", "name": "web_search",
                                      "note": "n\udce9"})
    assert server.definition is not None and server.definition["note"] == "n\ufffd"
    json.dumps(spec.to_anthropic(), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("spec", [
    {"name": "bad name"}, {"name": "x" * 65}, {"name": ""}, {"name": "f/g"},
    {"name": "ok", "input_schema": {"type": "array"}},
])
def test_an_invalid_tool_spec_is_a_tool_error_naming_the_rule_not_a_validation_dump(
        spec: dict[str, Any]) -> None:
    """ToolSpec(...) built by hand, as tool() and Tool() are: one ToolError naming the rule and
    the field, not pydantic's multi-line ValidationError ("1 validation error for ToolSpec")."""
    field = "input_schema" if "input_schema" in spec else "name"
    rule = "^[a-zA-Z0-9_-]{1,64}$" if field == "name" else 'of type "object"'
    with pytest.raises(ToolError) as raised:
        ToolSpec(**spec)
    message = str(raised.value)
    assert rule in message and message.startswith(f"tool {spec['name']!r}: ")
    assert raised.value.field == field
    assert "validation error" not in message and "\n" not in message
    if field == "name" and spec["name"]:  # (tool(fn, name="") is named after fn)
        with pytest.raises(ToolError, match=re.escape(rule)):
            tool(add, name=spec["name"])
