"""Replies that must not run their tool calls: cut by max_tokens (or a stop sequence), refused,
paused. The turn ends with a note and the stop_reason, nothing runs, and the stored log stays
valid for the next turn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_anthropic import FakeAnthropic, message, stream, text, tool_use
from fake_openai import FakeOpenAI, ToolCall, Turn

from colloquy import Chat, MemoryStore, ModelResponse, ScriptedModel, TextBlock, tool, tool_call
from colloquy.chat import NOT_RUN
from colloquy.context import problems
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.openai import OpenAIModel
from colloquy.usage import Usage

ran: list[dict[str, str]] = []


@tool
def send_email(to: str = "everyone@company.example", body: str = "") -> str:
    """Send an email."""
    ran.append({"to": to, "body": body})
    return "sent"


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    ran.clear()
    yield
    ran.clear()


def cut(*blocks: object, reason: str = "max_tokens") -> ModelResponse:
    return ModelResponse(content=list(blocks), stop_reason=reason,  # type: ignore[arg-type]
                         usage=Usage(input_tokens=50, output_tokens=50))


@pytest.mark.parametrize("reason", sorted(NOT_RUN))
def test_a_held_reply_never_runs_its_tool_and_ends_the_turn(reason: str) -> None:
    model = ScriptedModel([cut(TextBlock(text="Sending it now."), tool_call("send_email", {}, id="t1"),
                               reason=reason), "Sure, to whom?"])
    chat = Chat(model, tools=[send_email], store=MemoryStore(), title_model=False)
    reply = chat.send("email the draft to bob@example.com")
    assert ran == []
    assert len(model.requests) == 1, "no second model call: the turn ended"
    assert reply.stop_reason == reason and reply.rounds == 1
    assert any("send_email" in n and "not run" in n for n in reply.notes), reply.notes
    log = chat.history()
    assert log[-2].message.tool_uses[0].id == "t1", "the cut call is kept (lossless)"
    result = log[-1].message.tool_results[0]
    assert result.is_error and "not run" in result.text
    # The next turn goes on from a valid log.
    again = chat.send("to bob@example.com, please")
    assert again.text == "Sure, to whom?" and ran == []
    assert problems(model.last_request.messages, model.last_request.system) == []


def test_a_cut_call_in_a_later_round_is_not_run_either() -> None:
    model = ScriptedModel([
        ModelResponse(content=[tool_call("send_email", {"to": "a@x.example", "body": "hi"}, id="t1")],
                      stop_reason="tool_use"),
        cut(tool_call("send_email", {}, id="t2")),
    ])
    reply = Chat(model, tools=[send_email], store=MemoryStore(), title_model=False).send("mail a then b")
    assert ran == [{"to": "a@x.example", "body": "hi"}], "only the complete call ran"
    assert reply.stop_reason == "max_tokens" and reply.rounds == 2


def test_a_model_cut_every_time_is_called_once() -> None:
    calls: list[object] = []

    def answer(request: object) -> ModelResponse:
        calls.append(request)
        return cut(tool_call("send_email", {"to": "x"}))

    from colloquy import FunctionModel

    reply = Chat(FunctionModel(answer), tools=[send_email], store=MemoryStore(),
                 title_model=False).send("go")
    assert len(calls) == 1 and ran == []
    assert "max_tokens" in " ".join(reply.notes)


def test_a_text_reply_cut_by_max_tokens_says_so() -> None:
    reply = Chat(ScriptedModel([cut(TextBlock(text="The first half of"))]), store=MemoryStore(),
                 title_model=False).send("tell me everything")
    assert reply.stop_reason == "max_tokens"
    assert any("max_tokens" in n for n in reply.notes)


def _chat_cut_while_streaming_a_tool_call(fake: FakeAnthropic) -> Chat:
    """A Claude chat whose next streamed reply is cut by max_tokens inside a send_email call,
    and whose reply after that asks who should get it."""
    fake.enqueue(stream(text("Sending."), tool_use("toolu_cut", "send_email", {}),
                        stop_reason="max_tokens"),
                 message(text("Who should get it?")))
    model = AnthropicModel("claude-sonnet-4-6", api_key="k", base_url=fake.base_url,
                           environ={}, max_retries=0)
    return Chat(model, tools=[send_email], store=MemoryStore(), title_model=False)


def test_a_cut_tool_call_streamed_by_the_anthropic_api_is_not_run() -> None:
    with FakeAnthropic() as fake:
        chat = _chat_cut_while_streaming_a_tool_call(fake)
        events = list(chat.stream("email the draft"))
        final = events[-1]
        assert getattr(final, "stop_reason") == "max_tokens" and ran == []
        assert chat.send("bob").text == "Who should get it?"
        assert len(fake.requests) == 2, "the fake refuses an invalid history: it was valid"


def test_an_openai_reply_cut_by_length_is_not_run() -> None:
    with FakeOpenAI() as server:
        server.push(Turn(tool_calls=[ToolCall(id="call_1", name="send_email", arguments='{"to": "bo')],
                         finish_reason="length"),
                    Turn(text="ok"))
        model = OpenAIModel("gpt-4o", api_key="sk-x", base_url=server.base_url, environ={},
                            max_retries=0)
        chat = Chat(model, tools=[send_email], store=MemoryStore(), title_model=False)
        assert chat.send("email bob").stop_reason == "max_tokens"
        assert ran == []
        assert chat.send("again").text == "ok"


def test_the_async_turn_never_runs_a_cut_call_either() -> None:
    """The service's path: the SDKs' async clients, streamed (Anthropic) and not (OpenAI)."""
    import asyncio

    async def streamed(chat: Chat) -> list[object]:
        return [event async for event in chat.astream("email the draft")]

    with FakeAnthropic() as fake:
        chat = _chat_cut_while_streaming_a_tool_call(fake)
        final = asyncio.run(streamed(chat))[-1]
        assert getattr(final, "stop_reason") == "max_tokens" and ran == []
        assert any("not run" in n for n in getattr(final, "notes"))
        assert asyncio.run(chat.asend("bob")).text == "Who should get it?"
    with FakeOpenAI() as server:
        server.push(Turn(tool_calls=[ToolCall(id="call_1", name="send_email", arguments='{"to": "bo')],
                         finish_reason="length"),
                    Turn(text="ok"))
        model2 = OpenAIModel("gpt-4o", api_key="sk-x", base_url=server.base_url, environ={},
                             max_retries=0)
        chat2 = Chat(model2, tools=[send_email], store=MemoryStore(), title_model=False)
        assert asyncio.run(chat2.asend("email bob")).stop_reason == "max_tokens"
        assert ran == []
        assert asyncio.run(chat2.asend("again")).text == "ok"


@pytest.mark.parametrize("reason", ["a_reason_added_later", "pause_turn"])
def test_a_call_under_an_unknown_or_exhausted_stop_reason_is_held_too(reason: str) -> None:
    """A stop reason colloquy does not know (a provider's newer one), and pause_turn once the
    turn's rounds are spent, hold the reply's calls as a cut reply does, and say why."""
    answers: list[object] = [cut(TextBlock(text="Working."), tool_call("send_email", {}, id="t1"),
                                 reason=reason), "Sure."]
    model = ScriptedModel(answers)
    chat = Chat(model, tools=[send_email], store=MemoryStore(), title_model=False,
                max_tool_rounds=0)
    reply = chat.send("email it")
    assert ran == [] and reply.stop_reason == reason and len(model.requests) == 1
    note = " ".join(reply.notes)
    assert (repr(reason) in note) if reason != "pause_turn" else ("paused the turn" in note)
    assert "send_email were not run" in note
    assert chat.history()[-1].message.tool_results[0].is_error
    assert chat.send("again").text == "Sure."
    assert problems(model.last_request.messages, model.last_request.system) == []
