"""``tool_choice`` is honoured end to end: what a client asks through either compatible route
(OpenAI's SDK on ``/v1/chat/completions``, Anthropic's on ``/v1/messages``), streamed or not,
reaches the provider (the strict fake Claude, the strict fake OpenAI server) in the provider's
own shape, with ``parallel_tool_calls`` / ``disable_parallel_tool_use``; a choice naming a tool
the request does not offer, or given without tools, or of another shape, is a 400 naming the
field and reaches no provider. The library's ``Chat.send(tool_choice=...)`` sends it too, and
does not force a call again after colloquy ran its own tools (the loop would never end)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from colloquy import Chat, tool
from colloquy.models import ToolSpec
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.openai import OpenAIModel
from colloquy.server import create_app
from colloquy.store import MemoryStore, SQLiteStore
from colloquy.store.users import issue_token
from fake_anthropic import FakeAnthropic, either, text, tool_use
from fake_openai import FakeOpenAI, ToolCall, Turn
from server_helpers import serve_in_thread

CLAUDE = "claude-sonnet-4-6"
MODEL = {"anthropic": CLAUDE, "openai": "gpt-4o"}  # what each server offers
WEATHER = "get_weather"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
OPENAI_TOOLS: Any = [{"type": "function", "function": {
    "name": WEATHER, "description": "the weather", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
ANTHROPIC_TOOLS: Any = [{"name": WEATHER, "description": "the weather", "input_schema": SCHEMA},
                        {"name": "get_time", "input_schema": {"type": "object"}}]

#: Each case: what the OpenAI client sends, what the Anthropic client sends, then what the
#: Anthropic provider and the OpenAI provider must receive (``tool_choice``,
#: ``parallel_tool_calls``; None: absent).
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], tuple[Any, Any]]] = {
    "named, one call": (
        {"tool_choice": {"type": "function", "function": {"name": WEATHER}},
         "parallel_tool_calls": False},
        {"tool_choice": {"type": "tool", "name": WEATHER, "disable_parallel_tool_use": True}},
        {"type": "tool", "name": WEATHER, "disable_parallel_tool_use": True},
        ({"type": "function", "function": {"name": WEATHER}}, False)),
    "any": (
        {"tool_choice": "required"},
        {"tool_choice": {"type": "any"}},
        {"type": "any"},
        ("required", None)),
}


@dataclass
class Served:
    claude: FakeAnthropic
    gpt: FakeOpenAI
    urls: dict[str, str]  # provider -> the colloquy server in front of it
    tokens: dict[str, str]  # provider -> ann's token on that server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("tool_choice")
    stores = [SQLiteStore(tmp / "a.db"), SQLiteStore(tmp / "o.db")]
    with FakeAnthropic(title="A title") as claude, FakeOpenAI() as gpt:
        models = {"anthropic": AnthropicModel(CLAUDE, api_key="sk-ant-test",
                                              base_url=claude.base_url, max_retries=0),
                  "openai": OpenAIModel("gpt-4o", api_key="sk-test-0123456789",
                                        base_url=gpt.base_url, environ={}, max_retries=0)}
        tokens = {"anthropic": issue_token(stores[0], "ann"),
                  "openai": issue_token(stores[1], "ann")}
        with serve_in_thread(create_app(store=stores[0], model=models["anthropic"], environ={},
                                        rate_limit=None)) as a_url, \
                serve_in_thread(create_app(store=stores[1], model=models["openai"], environ={},
                                           rate_limit=None)) as o_url:
            yield Served(claude, gpt, {"anthropic": a_url, "openai": o_url}, tokens)
    for store in stores:
        store.close()


def _fresh(served: Served) -> None:
    served.claude.reset()
    served.gpt.replies.clear()
    served.gpt.requests.clear()


def _script_a_call(served: Served, provider: str) -> None:
    if provider == "anthropic":
        served.claude.enqueue(either(tool_use("toolu_1", WEATHER, {"city": "Oslo"}),
                                     stop_reason="tool_use"))
    else:
        served.gpt.push(Turn(tool_calls=[ToolCall("call_1", WEATHER, '{"city": "Oslo"}')]),
                        Turn(text="A title"))


def _received(served: Served, provider: str) -> list[dict[str, Any]]:
    """The turn requests (with tools) the provider received."""
    requests = served.claude.requests if provider == "anthropic" else served.gpt.requests
    return [r.body for r in requests if isinstance(r.body, dict) and r.body.get("tools")]


def _openai_client(served: Served, provider: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.urls[provider] + "/v1", max_retries=0,
                         api_key=served.tokens[provider])


def _anthropic_client(served: Served, provider: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.urls[provider], max_retries=0,
                               api_key=served.tokens[provider])


def _turn(served: Served, client: str, provider: str, streamed: bool, asked: dict[str, Any],
          name: str) -> str:
    """One turn through ``client``'s SDK; the name of the tool the reply calls."""
    hi: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    headers = {"X-Colloquy-Conversation": name}
    if client == "openai":
        oa = _openai_client(served, provider)
        kwargs: Any = {"model": MODEL[provider], "messages": hi, "tools": OPENAI_TOOLS,
                       "extra_headers": headers, **asked}
        if streamed:
            chunks = list(oa.chat.completions.create(**kwargs, stream=True))
            calls = [c for ch in chunks for choice in ch.choices
                     for c in choice.delta.tool_calls or []]
            assert "tool_calls" in {c.finish_reason for ch in chunks for c in ch.choices}
            return str(calls[0].function.name)  # type: ignore[union-attr]
        done = oa.chat.completions.create(**kwargs)
        assert done.choices[0].finish_reason == "tool_calls"
        return str(done.choices[0].message.tool_calls[0].function.name)  # type: ignore[index,union-attr]
    an = _anthropic_client(served, provider)
    akwargs: Any = {"model": MODEL[provider], "max_tokens": 200, "messages": hi, "tools": ANTHROPIC_TOOLS,
                    "extra_headers": headers, **asked}
    if streamed:
        with an.messages.stream(**akwargs) as events:
            message = events.get_final_message()
    else:
        message = an.messages.create(**akwargs)
    assert message.stop_reason == "tool_use"
    return next(b.name for b in message.content if b.type == "tool_use")


@pytest.mark.parametrize("streamed", [False, True], ids=["sent", "streamed"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_provider_receives_the_clients_tool_choice(
        served: Served, client: str, provider: str, streamed: bool, case: str) -> None:
    _fresh(served)
    from_openai, from_anthropic, to_anthropic, to_openai = CASES[case]
    _script_a_call(served, provider)
    name = f"{case.replace(' ', '').replace(',', '')}-{client}-{provider}-{streamed}"
    called = _turn(served, client, provider, streamed,
                   from_openai if client == "openai" else from_anthropic, name)
    assert called == WEATHER
    [body] = _received(served, provider)
    if provider == "anthropic":
        assert body["tool_choice"] == to_anthropic
    else:
        assert body["tool_choice"] == to_openai[0]
        assert body.get("parallel_tool_calls") == to_openai[1]


def _refused_openai(served: Served, **asked: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        _openai_client(served, "anthropic").chat.completions.create(
            model=CLAUDE, messages=[{"role": "user", "content": "hi"}], **asked)
    return e.value


def _refused_anthropic(served: Served, **asked: Any) -> anthropic.BadRequestError:
    with pytest.raises(anthropic.BadRequestError) as e:
        _anthropic_client(served, "anthropic").messages.create(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi"}], **asked)
    return e.value


def test_a_choice_that_cannot_be_honoured_is_a_400_naming_the_field(served: Served) -> None:
    _fresh(served)
    unknown = _refused_openai(served, tools=OPENAI_TOOLS, tool_choice={
        "type": "function", "function": {"name": "get_news"}})
    assert unknown.body["param"] == "tool_choice.function.name"  # type: ignore[index]
    assert "'get_news' is not among the request's tools" in unknown.message
    bare = _refused_openai(served, tool_choice="required")
    assert bare.body["param"] == "tool_choice"  # type: ignore[index]
    assert "only allowed when tools are given" in bare.message
    odd = _refused_openai(served, tools=OPENAI_TOOLS, tool_choice="sometimes")
    assert odd.body["param"] == "tool_choice"  # type: ignore[index]

    unknown_a = _refused_anthropic(served, tools=ANTHROPIC_TOOLS,
                                   tool_choice={"type": "tool", "name": "get_news"})
    assert "tool_choice.name: 'get_news' is not among the request's tools" in unknown_a.message
    bare_a = _refused_anthropic(served, tool_choice={"type": "any"})
    assert "tool_choice is only allowed when tools are given" in bare_a.message
    odd_a = _refused_anthropic(served, tools=ANTHROPIC_TOOLS, tool_choice={"type": "maybe"})
    assert "tool_choice" in odd_a.message
    unnamed = _refused_anthropic(served, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool"})
    assert "tool_choice" in unnamed.message
    assert served.claude.requests == []  # refused before any model call


def test_parallel_tool_calls_alone_is_sent_with_auto(served: Served) -> None:
    _fresh(served)
    _script_a_call(served, "openai")
    _turn(served, "openai", "openai", False, {"parallel_tool_calls": False}, "parallel-alone")
    [body] = _received(served, "openai")
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", False)
    _script_a_call(served, "anthropic")
    _turn(served, "openai", "anthropic", True, {"parallel_tool_calls": False}, "parallel-a")
    [body] = _received(served, "anthropic")
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


# -- the library --------------------------------------------------------------------------------


def test_the_library_sends_tool_choice_and_refuses_one_it_cannot_honour(served: Served) -> None:
    _fresh(served)
    model = AnthropicModel(CLAUDE, api_key="sk-ant-test", base_url=served.claude.base_url,
                           max_retries=0)
    chat = Chat(model, store=MemoryStore())
    spec = ToolSpec(name=WEATHER, description="the weather", input_schema=SCHEMA)
    served.claude.enqueue(either(tool_use("toolu_1", WEATHER, {"city": "Oslo"}),
                                 stop_reason="tool_use"))
    reply = chat.send("Weather?", tools=[spec], tool_choice={"type": "tool", "name": WEATHER})
    assert reply.stop_reason == "tool_use"
    [body] = _received(served, "anthropic")
    assert body["tool_choice"] == {"type": "tool", "name": WEATHER}
    stored = len(chat.history())
    with pytest.raises(ValueError, match="'get_news', which is not among the tools offered"):
        chat.send("again", tools=[spec], tool_choice={"type": "tool", "name": "get_news"})
    with pytest.raises(ValueError, match="tool_choice needs tools"):
        chat.send("again", tool_choice="any")
    with pytest.raises(ValueError, match="tool_choice"):
        chat.send("again", tools=[spec], tool_choice="required")  # OpenAI's word: not ours
    assert len(chat.history()) == stored  # nothing stored for a refused turn


def test_a_forced_call_is_not_forced_again_after_colloquy_ran_the_tool(served: Served) -> None:
    """``any`` with the chat's own tools: the first call is forced, the one after the tool ran
    is not (else the model would have to call a tool forever); OpenAI's shape alike."""
    _fresh(served)

    @tool
    def get_weather(city: str) -> str:
        """the weather"""
        return f"Sunny in {city}"

    claude = Chat(AnthropicModel(CLAUDE, api_key="sk-ant-test", base_url=served.claude.base_url,
                                 max_retries=0), store=MemoryStore(), tools=[get_weather])
    served.claude.enqueue(either(tool_use("toolu_1", WEATHER, {"city": "Oslo"}),
                                 stop_reason="tool_use"), either(text("Sunny.")))
    assert claude.send("Weather?", tool_choice="any").text == "Sunny."
    assert [b.get("tool_choice") for b in _received(served, "anthropic")] == [{"type": "any"}, None]

    gpt = Chat(OpenAIModel("gpt-4o", api_key="sk-test-0123456789", base_url=served.gpt.base_url,
                           environ={}, max_retries=0), store=MemoryStore(), tools=[get_weather])
    served.gpt.push(Turn(tool_calls=[ToolCall("call_1", WEATHER, '{"city": "Oslo"}')]),
                    Turn(text="Sunny."), Turn(text="A title"))
    replies = list(gpt.stream("Weather?", tool_choice={"type": "any",
                                                       "disable_parallel_tool_use": True}))
    assert replies[-1].text == "Sunny."  # type: ignore[union-attr]
    sent = [(b.get("tool_choice"), b.get("parallel_tool_calls"))
            for b in _received(served, "openai")
            if "Title:" not in json.dumps(b["messages"][-1])]
    assert sent == [("required", False), ("auto", False)]


def test_a_choice_of_a_server_tool_is_not_sent_to_an_openai_model(served: Served) -> None:
    """OpenAI's shape has no server tools: a choice naming one is dropped, with a note, rather
    than refused by the provider for naming a tool it was not offered."""
    _fresh(served)
    search = ToolSpec(name="web_search",
                      definition={"type": "web_search_20250305", "name": "web_search"})
    chat = Chat(OpenAIModel("gpt-4o", api_key="sk-test-0123456789", base_url=served.gpt.base_url,
                            environ={}, max_retries=0), store=MemoryStore())
    served.gpt.push(Turn(text="No search here."), Turn(text="A title"))
    reply = chat.send("Search?", tools=[search], tool_choice={"type": "tool", "name": "web_search"})
    assert reply.text == "No search here."
    assert "tool_choice" not in served.gpt.requests[0].body
    assert any(n.startswith("tool_choice not sent to the OpenAI-shaped model") for n in reply.notes)
