"""Messages are content blocks in the Anthropic shape; the system prompt is never a message;
the OpenAI shape is produced at the edge by to_openai_messages."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from colloquy.messages import (
    ImageBlock,
    Message,
    MessageList,
    StoredMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    system_text,
)
from colloquy.openai_shape import to_openai_messages
from colloquy.models import ModelRequest
from colloquy.usage import Usage

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


# -- the Anthropic shape --------------------------------------------------------------------------


def test_plain_string_is_shorthand_for_one_text_block() -> None:
    m = Message(role="user", content="hello")
    assert m.content == [TextBlock(text="hello")]
    assert m == Message.user("hello")
    assert Message.assistant("hi").role == "assistant"


def test_to_anthropic_is_the_messages_api_shape() -> None:
    m = Message(
        role="assistant",
        content=[TextBlock(text="Let me look."), ToolUseBlock(id="tu_1", name="lookup", input={"q": "x"})],
    )
    assert m.to_anthropic() == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": "x"}},
        ],
    }
    r = Message(role="user", content=[ToolResultBlock(tool_use_id="tu_1", content="42", is_error=False)])
    assert r.to_anthropic() == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "42", "is_error": False}],
    }
    img = Message(role="user", content=[ImageBlock(source=PNG), TextBlock(text="what is this?")])
    assert img.to_anthropic()["content"][0] == {"type": "image", "source": PNG}


def test_cache_control_is_kept_only_when_set() -> None:
    plain = TextBlock(text="x")
    marked = TextBlock(text="x", cache_control={"type": "ephemeral"})
    assert "cache_control" not in Message(role="user", content=[plain]).to_anthropic()["content"][0]
    assert Message(role="user", content=[marked]).to_anthropic()["content"][0]["cache_control"] == {
        "type": "ephemeral"
    }


def test_blocks_are_parsed_from_wire_json_by_their_type() -> None:
    wire = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "a", "name": "f", "input": {"n": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "a",
                 "content": [{"type": "text", "text": "one"}, {"type": "image", "source": PNG}]},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
        },
    ]
    msgs = MessageList.validate_python(wire)
    assert [type(b) for b in msgs[1].content] == [TextBlock, ToolUseBlock]
    assert isinstance(msgs[2].content[0], ToolResultBlock)
    assert isinstance(msgs[2].content[1], ImageBlock)
    assert msgs[2].content[0].text == "one"
    # Round trip through JSON loses nothing.
    again = MessageList.validate_json(MessageList.dump_json(msgs))
    assert again == msgs
    assert [m.to_anthropic() for m in again] == [m.to_anthropic() for m in msgs]


def test_unknown_block_types_and_fields_are_kept_but_known_blocks_must_be_whole() -> None:
    """Forward compatibility: what the API adds later is kept and replayed, never refused."""
    m = Message.model_validate({"role": "user", "content": [
        {"type": "audio", "data": "..."}, {"type": "text", "text": "x", "bold": True}]})
    assert m.to_anthropic()["content"] == [{"type": "audio", "data": "..."},
                                           {"type": "text", "text": "x", "bold": True}]
    with pytest.raises(ValidationError):  # a known type without its fields is still an error
        Message.model_validate({"role": "user", "content": [{"type": "text"}]})
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "content": [{"data": "no type"}]})


def test_messages_and_blocks_are_immutable_values() -> None:
    m = Message.user("hi")
    with pytest.raises(ValidationError):
        m.role = "assistant"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        m.content[0].text = "changed"  # type: ignore[misc]
    assert Message.user("hi") == m
    assert hash(TextBlock(text="a")) == hash(TextBlock(text="a"))


def test_the_system_prompt_is_never_a_message() -> None:
    for role in ("system", "developer", "tool"):
        with pytest.raises(ValidationError):
            Message(role=role, content="You are a pirate.")  # type: ignore[arg-type]
    req = ModelRequest(
        model="m", system=[TextBlock(text="You are a pirate.")], messages=[Message.user("hi")]
    )
    body = req.to_anthropic()
    assert body["system"] == [{"type": "text", "text": "You are a pirate."}]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "pirate" not in json.dumps(body["messages"])


def test_message_accessors() -> None:
    use_a = ToolUseBlock(id="a", name="f")
    use_b = ToolUseBlock(id="b", name="g", input={"x": 1})
    asst = Message(role="assistant", content=[TextBlock(text="one "), use_a, TextBlock(text="two"), use_b])
    assert asst.text == "one two"
    assert asst.tool_uses == [use_a, use_b]
    assert asst.tool_results == []
    assert not asst.starts_turn

    res = ToolResultBlock(tool_use_id="a", content="ok")
    only_results = Message(role="user", content=[res])
    assert only_results.tool_results == [res]
    assert only_results.text == ""
    assert not only_results.starts_turn, "a tool_result message lies inside a turn"

    assert Message.user("hello").starts_turn
    assert Message(role="user", content=[res, TextBlock(text="and also")]).starts_turn
    assert Message(role="user", content=[ImageBlock(source=PNG)]).starts_turn


def test_tool_result_text() -> None:
    assert ToolResultBlock(tool_use_id="a", content="plain").text == "plain"
    listed = ToolResultBlock(
        tool_use_id="a", content=[TextBlock(text="l1"), ImageBlock(source=PNG), TextBlock(text="l2")]
    )
    assert listed.text == "l1\nl2"
    assert ToolResultBlock(tool_use_id="a").content == ""
    assert ToolResultBlock(tool_use_id="a").is_error is False


def test_stored_message_wraps_a_message_with_its_place_in_the_log() -> None:
    sm = StoredMessage(
        conversation_id="c1", seq=3, message=Message.assistant("hi"),
        usage=Usage(input_tokens=5, output_tokens=2), model="echo", cost_usd=0.0, meta={"k": 1},
    )
    assert sm.role == "assistant"
    assert sm.created_at > 0
    assert StoredMessage.model_validate_json(sm.model_dump_json()) == sm


def test_system_text_joins_blocks() -> None:
    assert system_text("persona") == "persona"
    assert system_text([TextBlock(text="a"), TextBlock(text="b")]) == "a\n\nb"
    assert system_text([]) == ""


# -- the OpenAI shape -------------------------------------------------------------------------------


def test_openai_system_comes_first_and_only_when_set() -> None:
    msgs = [Message.user("hi"), Message.assistant("hello")]
    out = to_openai_messages("Be brief.", msgs)
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert to_openai_messages("", msgs)[0] == {"role": "user", "content": "hi"}
    blocks = to_openai_messages([TextBlock(text="a"), TextBlock(text="b")], msgs)
    assert blocks[0] == {"role": "system", "content": "a\n\nb"}


def test_openai_tool_use_becomes_tool_calls_and_results_follow_as_role_tool() -> None:
    msgs = [
        Message.user("weather in Paris and Rome?"),
        Message(role="assistant", content=[
            ToolUseBlock(id="call_1", name="weather", input={"city": "Paris"}),
            ToolUseBlock(id="call_2", name="weather", input={"city": "Rome"}),
        ]),
        Message(role="user", content=[
            ToolResultBlock(tool_use_id="call_1", content="sunny"),
            ToolResultBlock(tool_use_id="call_2", content="timeout", is_error=True),
            TextBlock(text="and tomorrow?"),
        ]),
        Message(role="assistant", content=[TextBlock(text="Checking."),
                                           ToolUseBlock(id="call_3", name="forecast", input={})]),
        Message(role="user", content=[ToolResultBlock(
            tool_use_id="call_3", content=[TextBlock(text="rain"), TextBlock(text="wind")])]),
    ]
    out = to_openai_messages("sys", msgs)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "tool", "user",
                                        "assistant", "tool"]
    first_calls = out[2]
    assert first_calls["content"] is None, "no text: content is null, as OpenAI expects"
    assert first_calls["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": json.dumps({"city": "Paris"})}},
        {"id": "call_2", "type": "function",
         "function": {"name": "weather", "arguments": json.dumps({"city": "Rome"})}},
    ]
    assert json.loads(first_calls["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # Each result right after the assistant message that asked, in order, errors flagged.
    assert out[3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert out[4]["tool_call_id"] == "call_2"
    assert out[4]["content"].startswith("[tool error]") and "timeout" in out[4]["content"]
    # The user's own words come after the tool messages.
    assert out[5] == {"role": "user", "content": "and tomorrow?"}
    assert out[6]["content"] == "Checking."
    assert out[6]["tool_calls"][0]["function"] == {"name": "forecast", "arguments": "{}"}
    assert out[7] == {"role": "tool", "tool_call_id": "call_3", "content": "rain\nwind"}


def test_openai_images_become_image_url_parts() -> None:
    msgs = [Message(role="user", content=[
        TextBlock(text="compare"),
        ImageBlock(source=PNG),
        ImageBlock(source={"type": "url", "url": "https://example.com/cat.jpg"}),
    ])]
    (user,) = to_openai_messages("", msgs)
    assert user["role"] == "user"
    assert user["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]


def test_openai_text_only_user_blocks_are_joined_and_cache_markers_dropped() -> None:
    msgs = [Message(role="user", content=[
        TextBlock(text="one", cache_control={"type": "ephemeral"}), TextBlock(text="two")])]
    out = to_openai_messages("", msgs)
    assert out == [{"role": "user", "content": "one\n\ntwo"}]
    assert "cache_control" not in json.dumps(out)


def test_openai_tool_only_user_message_adds_no_empty_user_message() -> None:
    msgs = [
        Message.user("go"),
        Message(role="assistant", content=[ToolUseBlock(id="t", name="f")]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="t", content="done")]),
    ]
    out = to_openai_messages("", msgs)
    assert [m["role"] for m in out] == ["user", "assistant", "tool"]
