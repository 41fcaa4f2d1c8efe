"""Traces in the OpenTelemetry GenAI conventions, read back from the SDK's in-memory exporter,
and the records metrics are made from.

The tracer provider is the real OpenTelemetry SDK (installed once for this process); colloquy
itself only calls the API. Models are the offline doubles and the loopback fake OpenAI server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from colloquy import Chat, MemoryStore, RateLimitError, ScriptedModel, tool, tool_call
from colloquy.context.compose import ComposedPolicy, RecentTurns
from colloquy.context.summary import Summariser, SummaryPart
from colloquy.memory.offline import ExtractiveSummariser
from colloquy.models import Model, ModelRequest, ModelResponse, StreamEvent, TextDelta
from colloquy.messages import TextBlock
from colloquy.telemetry import (
    Listener,
    ModelCall,
    TurnEnded,
    TurnStarted,
    add_listener,
    capture_content,
    remove_listener,
)
from colloquy.usage import Usage

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK with an in-memory exporter as this process's tracer provider (set once: the
    OpenTelemetry API allows one global provider per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()
    capture_content(None)


class Recorder(Listener):
    def __init__(self) -> None:
        self.calls: list[ModelCall] = []
        self.started: list[TurnStarted] = []
        self.ended: list[TurnEnded] = []

    def model_call(self, call: ModelCall) -> None:
        self.calls.append(call)

    def turn_started(self, turn: TurnStarted) -> None:
        self.started.append(turn)

    def turn_ended(self, turn: TurnEnded) -> None:
        self.ended.append(turn)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    add_listener(r)
    yield r
    remove_listener(r)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"rainy in {city}"


def _chat(model: Model) -> Chat:
    summaries = SummaryPart(Summariser(ExtractiveSummariser()), min_new_turns=2)
    return Chat(model, system="You are a travel agent.", store=MemoryStore(), session_id="trip-1",
                user_id="ana", tools=[get_weather],
                policy=ComposedPolicy(4000, parts=[summaries], recent=RecentTurns(turns=2)))


def _one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in found if s.name == name]
    assert len(matching) == 1, (name, [s.name for s in found])
    return matching[0]


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_tool_using_turn_with_a_summary_is_one_trace(
    spans: InMemorySpanExporter, recorder: Recorder
) -> None:
    model = ScriptedModel([
        "Lisbon is lovely in May.", "Porto too.", "Both have trains.",
        tool_call("get_weather", {"city": "Paris"}),
        "It is rainy in Paris: take an umbrella.",
    ])
    chat = _chat(model)
    for text in ("Where should I go in May?", "And in June?", "How do I get there?"):
        chat.send(text)
    spans.clear()
    recorder.calls.clear()

    deltas = [e for e in chat.stream("What is the weather in Paris?") if isinstance(e, str)]
    assert "".join(deltas) == "It is rainy in Paris: take an umbrella."
    found = list(spans.get_finished_spans())

    # One trace; the turn span is its root.
    turn = _one(found, "invoke_agent colloquy")
    assert turn.parent is None
    assert {s.context.trace_id for s in found} == {turn.context.trace_id}
    assert turn.kind == SpanKind.INTERNAL
    attrs = dict(turn.attributes or {})
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "colloquy"
    assert attrs["gen_ai.conversation.id"] == "trip-1"
    assert attrs["gen_ai.provider.name"] == "offline"
    assert attrs["gen_ai.request.model"] == "scripted"
    assert attrs["colloquy.turn.rounds"] == 2 and attrs["colloquy.turn.outcome"] == "ok"
    assert attrs["colloquy.cost_usd"] == 0.0

    # The two model calls of the tool loop: the conventions' inference spans, children of the turn.
    calls = [s for s in found if s.name == "chat scripted"]
    assert len(calls) == 2
    for call in calls:
        a = dict(call.attributes or {})
        assert _parent(call) == turn.context.span_id
        assert call.kind == SpanKind.INTERNAL  # an in-process double (CLIENT for providers)
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "offline"
        assert a["gen_ai.request.model"] == "scripted" == a["gen_ai.response.model"]
        assert a["gen_ai.request.max_tokens"] == 1024
        assert a["gen_ai.conversation.id"] == "trip-1"
        assert a["colloquy.purpose"] == "turn"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["colloquy.cost_usd"] == 0.0
        assert str(a["gen_ai.response.id"]).startswith("msg_")
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
        assert call.status.status_code == StatusCode.UNSET
    assert [tuple(dict(c.attributes or {})["gen_ai.response.finish_reasons"]) for c in
            sorted(calls, key=lambda s: s.start_time or 0)] == [("tool_use",), ("end_turn",)]
    assert sum(dict(c.attributes or {})["gen_ai.usage.output_tokens"] for c in calls) == \
        attrs["gen_ai.usage.output_tokens"]

    # The tool ran between the two calls, as the conventions' execute_tool span.
    run = _one(found, "execute_tool get_weather")
    assert _parent(run) == turn.context.span_id
    assert dict(run.attributes or {})["gen_ai.tool.name"] == "get_weather"
    assert dict(run.attributes or {})["gen_ai.tool.call.id"].startswith("toolu_")
    first, second = sorted(calls, key=lambda s: s.start_time or 0)
    assert (first.end_time or 0) <= (run.start_time or 0) <= (run.end_time or 0) <= (second.start_time or 0)

    # The context policy's work, once per round; the summary was written in the first round,
    # by its own model call, a child of that context span.
    contexts = sorted([s for s in found if s.name == "colloquy.context"], key=lambda s: s.start_time or 0)
    assert len(contexts) == 2 and all(_parent(c) == turn.context.span_id for c in contexts)
    ca = dict(contexts[0].attributes or {})
    assert ca["colloquy.context.policy"] == "ComposedPolicy"
    assert "summary" in ca["colloquy.context.parts"]
    assert ca["colloquy.context.input_tokens"] > 0 and ca["colloquy.context.messages"] >= 3
    assert ca["colloquy.context.history_messages"] == 7
    summary = _one(found, "chat offline-summariser")
    sa = dict(summary.attributes or {})
    assert _parent(summary) == contexts[0].context.span_id
    assert sa["colloquy.purpose"] == "summary" and sa["gen_ai.conversation.id"] == "trip-1"
    assert sa["gen_ai.provider.name"] == "offline" and sa["colloquy.cost_usd"] == 0.0

    # The store's work and the turn lock, children of the turn too.
    appends = [s for s in found if s.name == "colloquy.store.append"]
    assert len(appends) == 4  # the question, the tool call, its result, the answer
    assert all(_parent(s) == turn.context.span_id for s in appends)
    assert _parent(_one(found, "colloquy.turn_lock")) == turn.context.span_id
    assert all(dict(s.attributes or {})["db.system.name"] == "MemoryStore" for s in appends)

    # The records metrics are made from: the same calls, each with its purpose.
    assert sorted(c.purpose for c in recorder.calls) == ["summary", "turn", "turn"]
    assert all(c.cost_usd == 0.0 and c.error_type is None for c in recorder.calls)
    assert all(c.streaming for c in recorder.calls if c.purpose == "turn")
    last = recorder.ended[-1]
    assert last.outcome == "ok" and last.streaming and last.conversation_id == "trip-1"
    assert last.time_to_first_token is not None and 0 < last.time_to_first_token <= last.duration


def test_content_is_recorded_only_when_the_operator_opts_in(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ScriptedModel([tool_call("get_weather", {"city": "Oslo"}), "Snow.", "Sun."])
    chat = Chat(model, system="Be brief.", store=MemoryStore(), tools=[get_weather])
    chat.send("Weather in Oslo?")
    for s in spans.get_finished_spans():
        assert not any(k in (s.attributes or {}) for k in (
            "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
            "gen_ai.tool.call.arguments", "gen_ai.tool.call.result")), s.name
    spans.clear()

    # The GenAI instrumentations' opt-in variable.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    chat.send("And tomorrow?")
    (call,) = [s for s in spans.get_finished_spans() if s.name == "chat scripted"]
    a = dict(call.attributes or {})
    assert json.loads(str(a["gen_ai.system_instructions"])) == [{"type": "text", "content": "Be brief."}]
    messages = json.loads(str(a["gen_ai.input.messages"]))
    assert messages[0] == {"role": "user", "parts": [{"type": "text", "content": "Weather in Oslo?"}]}
    assert messages[1]["parts"][0]["type"] == "tool_call"
    assert messages[1]["parts"][0]["arguments"] == {"city": "Oslo"}
    assert messages[2]["parts"][0] == {"type": "tool_call_response",
                                       "id": messages[1]["parts"][0]["id"], "response": "rainy in Oslo"}
    assert messages[-1]["parts"] == [{"type": "text", "content": "And tomorrow?"}]
    assert json.loads(str(a["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sun."}], "finish_reason": "stop"}]
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
    capture_content(False)  # the programmatic switch wins over the variable
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    spans.clear()
    model.add("Rain.")
    chat.send("And Friday?")
    (call,) = [s for s in spans.get_finished_spans() if s.name == "chat scripted"]
    assert "gen_ai.input.messages" not in (call.attributes or {})


def test_a_failed_call_records_its_error_type_and_the_message_is_kept(
    spans: InMemorySpanExporter, recorder: Recorder
) -> None:
    model = ScriptedModel([RateLimitError("slow down", provider="anthropic", status=429)])
    chat = Chat(model, store=MemoryStore(), session_id="c-err")
    with pytest.raises(RateLimitError):
        chat.send("hello?")
    found = list(spans.get_finished_spans())
    call = _one(found, "chat scripted")
    assert dict(call.attributes or {})["error.type"] == "RateLimitError"
    assert call.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in call.events)
    turn = _one(found, "invoke_agent colloquy")
    assert dict(turn.attributes or {})["error.type"] == "RateLimitError"
    assert dict(turn.attributes or {})["colloquy.turn.outcome"] == "RateLimitError"
    assert turn.status.status_code == StatusCode.ERROR
    (failed,) = recorder.calls
    assert failed.error_type == "RateLimitError" and failed.usage is None
    assert recorder.ended[-1].outcome == "RateLimitError"
    assert [m.message.text for m in chat.history()] == ["hello?"]  # the user's message is kept


def test_side_calls_outside_the_tool_loop_declare_their_purpose(
    spans: InMemorySpanExporter, recorder: Recorder
) -> None:
    """A title by a local model through the fake OpenAI-compatible server: a CLIENT span with
    the server's address, purpose title, priced $0."""
    from fake_openai import FakeOpenAI, Turn

    from colloquy.models import get_model

    with FakeOpenAI() as server:
        server.push(Turn(text="Paella tonight."), Turn(text="Dinner plans"))
        model = get_model("ollama:llama3", base_url=server.base_url, environ={})
        Chat(model, store=MemoryStore(), session_id="c-title").send("What should we cook?")
    found = list(spans.get_finished_spans())
    calls = [s for s in found if s.name == "chat llama3"]
    assert [dict(s.attributes or {})["colloquy.purpose"] for s in calls] == ["turn", "title"]
    title = calls[1]
    a = dict(title.attributes or {})
    assert title.kind == SpanKind.CLIENT
    assert a["gen_ai.provider.name"] == "ollama"
    assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
    assert a["gen_ai.request.max_tokens"] == 24 and a["gen_ai.request.temperature"] == 0.0
    assert a["colloquy.cost_usd"] == 0.0 and a["gen_ai.conversation.id"] == "c-title"
    turn = _one(found, "invoke_agent colloquy")
    assert all(_parent(s) == turn.context.span_id for s in calls)
    assert [c.purpose for c in recorder.calls] == ["turn", "title"]


class AsyncOnly(Model):
    """A model with async entry points of its own, as an async adapter would have."""

    name = "async-double"
    provider = "offline"

    def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("the async entry points are used")

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(0)
        return ModelResponse(content=[TextBlock(text="ok")], model=self.name,
                             usage=Usage(input_tokens=3, output_tokens=1))

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        yield TextDelta(text="o")
        yield TextDelta(text="k")
        yield await self.arequest(request)  # not counted twice


def test_async_entry_points_are_instrumented_in_the_same_place(
    spans: InMemorySpanExporter, recorder: Recorder
) -> None:
    m = AsyncOnly()
    req = ModelRequest(model="async-double", messages=[], max_tokens=5)

    async def go() -> list[Any]:
        await m.arequest(req)
        return [e async for e in m.astream(req)]

    events = asyncio.run(go())
    assert [getattr(e, "text", None) for e in events[:2]] == ["o", "k"]
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["chat async-double", "chat async-double"]
    assert [(c.streaming, c.usage) for c in recorder.calls] == [
        (False, Usage(input_tokens=3, output_tokens=1)), (True, Usage(input_tokens=3, output_tokens=1))]
    assert recorder.calls[1].time_to_first_chunk is not None


class ThreadedDefault(Model):
    """Only request() of its own; arequest hands the same request to request() in a pool
    thread without the caller's context (as a default async entry point may)."""

    name = "threaded"
    provider = "offline"

    def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(content=[TextBlock(text="ok")], model=self.name)

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        import concurrent.futures

        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return await loop.run_in_executor(pool, self.request, request)


def test_a_call_handed_to_another_thread_is_one_span(spans: InMemorySpanExporter) -> None:
    m = ThreadedDefault()
    req = ModelRequest(model="threaded", messages=[], max_tokens=5)
    asyncio.run(m.arequest(req))
    assert [s.name for s in spans.get_finished_spans()] == ["chat threaded"]
    m.request(req)  # and the request itself, called directly, is a span of its own
    assert len(spans.get_finished_spans()) == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_an_async_turn_is_one_trace_too(spans: InMemorySpanExporter, streaming: bool) -> None:
    """The async API awaits the model on the event loop, outside the turn's own steps (see
    colloquy.effects): the call still starts in the turn's context, so its span is the turn's
    child with purpose "turn", and so are the tool spans, the lock's and the store's."""
    model = ScriptedModel([tool_call("get_weather", {"city": "Oslo"}), "Snow in Oslo."])
    chat = Chat(model, store=MemoryStore(), session_id="trip-2", tools=[get_weather])

    async def main() -> str:
        if not streaming:
            return (await chat.asend("Weather in Oslo?")).text
        return "".join([e async for e in chat.astream("Weather in Oslo?") if isinstance(e, str)])

    assert asyncio.run(main()) == "Snow in Oslo."
    found = list(spans.get_finished_spans())
    turn = _one(found, "invoke_agent colloquy")
    assert {s.context.trace_id for s in found} == {turn.context.trace_id}
    calls = [s for s in found if s.name == "chat scripted"]
    assert len(calls) == 2 and all(_parent(c) == turn.context.span_id for c in calls)
    assert all(dict(c.attributes or {})["colloquy.purpose"] == "turn" for c in calls)
    tools = [s for s in found if s.name.startswith("execute_tool")]
    assert len(tools) == 1 and _parent(tools[0]) == turn.context.span_id
    assert _parent(_one(found, "colloquy.turn_lock")) == turn.context.span_id
