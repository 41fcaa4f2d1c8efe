"""The OpenAI adapter against a real HTTP server on loopback (tests/fake_openai.py).

Nothing is mocked: the official SDK sends real requests, so these tests check the wire format
colloquy produces, the replies it understands, and how HTTP errors surface.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from fake_openai import ErrorReply, FakeOpenAI, StreamError, ToolCall, Turn

from colloquy.errors import (
    AuthenticationError,
    BadRequestError,
    ContextTooLongError,
    MissingAPIKeyError,
    ModelConnectionError,
    ModelError,
    OverloadedError,
    RateLimitError,
)
from colloquy.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.openai_shape import to_openai_messages
from colloquy.models import ModelRequest, ModelResponse, TextDelta, ToolSpec, get_model
from colloquy.models.openai import OpenAIModel
from colloquy.usage import Usage, cost_of, price_for

KEY = "sk-test-secret-0123456789"

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]},
)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


@pytest.fixture
def model(server: FakeOpenAI) -> OpenAIModel:
    return OpenAIModel("gpt-4o", api_key=KEY, base_url=server.base_url, environ={},
                       max_retries=0)


def req(*messages: Message, **kwargs: object) -> ModelRequest:
    return ModelRequest(model="gpt-4o", messages=list(messages) or [Message.user("hi")],
                        **kwargs)  # type: ignore[arg-type]


def collect(model: OpenAIModel, request: ModelRequest) -> tuple[list[str], ModelResponse]:
    deltas: list[str] = []
    final: list[ModelResponse] = []
    for event in model.stream(request):
        if isinstance(event, TextDelta):
            assert not final, "a delta came after the final response"
            deltas.append(event.text)
        else:
            final.append(event)
    assert len(final) == 1
    return deltas, final[0]


# -- what is sent -------------------------------------------------------------------------------


def test_request_body_and_headers(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(text="ok"))
    model.request(req(
        Message.user("Weather in Paris?"),
        Message(role="assistant", content=[
            TextBlock(text="Checking."),
            ToolUseBlock(id="call_1", name="get_weather", input={"city": "Paris"}),
        ]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="call_1", content="18C")]),
        system=[TextBlock(text="You are terse.")],
        tools=[WEATHER],
        temperature=0.3,
        max_tokens=77,
    ))
    sent = server.last
    assert sent.method == "POST" and sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = sent.body
    assert body["model"] == "gpt-4o"
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": WEATHER.input_schema,
    }}]
    assert body["temperature"] == 0.3
    assert body["max_completion_tokens"] == 77 and "max_tokens" not in body
    assert "stream" not in body or body["stream"] is False


def test_optional_fields_are_left_out(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(text="ok"))
    model.request(req(Message.user("hi")))
    body = server.last.body
    assert "temperature" not in body and "tools" not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_compatible_servers_get_max_tokens(server: FakeOpenAI) -> None:
    local = OpenAIModel("llama3", base_url=server.base_url, environ={}, provider="ollama")
    server.push(Turn(text="ok"))
    local.request(req(max_tokens=99))
    assert server.last.body["max_tokens"] == 99
    assert "max_completion_tokens" not in server.last.body


# -- what comes back ----------------------------------------------------------------------------


def test_text_reply(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(text="Hello there.", prompt_tokens=120, completion_tokens=7,
                     cached_tokens=100))
    resp = model.request(req())
    assert resp.content == [TextBlock(text="Hello there.")]
    assert resp.stop_reason == "end_turn"
    assert resp.usage == Usage(input_tokens=20, output_tokens=7, cache_read_tokens=100)
    assert resp.usage.prompt_tokens == 120
    assert resp.model == "gpt-4o" and resp.id and resp.id.startswith("chatcmpl-")


def test_tool_call_reply(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(text=None, tool_calls=[
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_weather", '{"city": '),  # the model broke its JSON
        ToolCall("call_c", "now", ""),
    ]))
    resp = model.request(req(tools=[WEATHER]))
    assert resp.stop_reason == "tool_use"
    assert resp.text == ""
    assert resp.tool_uses == [
        ToolUseBlock(id="call_a", name="get_weather", input={"city": "Paris"}),
        ToolUseBlock(id="call_b", name="get_weather", input={"_raw": '{"city": '}),
        ToolUseBlock(id="call_c", name="now", input={}),
    ]


@pytest.mark.parametrize(("finish", "expected"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"),
])
def test_finish_reasons(server: FakeOpenAI, model: OpenAIModel, finish: str,
                        expected: str) -> None:
    server.push(Turn(text="x", finish_reason=finish))
    assert model.request(req()).stop_reason == expected
    server.push(Turn(text="x", finish_reason=finish))
    assert collect(model, req())[1].stop_reason == expected


def test_tool_calls_win_over_a_stop_finish_reason(server: FakeOpenAI,
                                                   model: OpenAIModel) -> None:
    # Some compatible servers say "stop" even when they called a tool.
    server.push(Turn(tool_calls=[ToolCall("c1", "get_weather", "{}")], finish_reason="stop"))
    assert model.request(req()).stop_reason == "tool_use"


def test_refusal_is_text_with_refusal_stop(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(refusal="I can't help with that."))
    resp = model.request(req())
    assert resp.text == "I can't help with that." and resp.stop_reason == "refusal"


def test_missing_usage_is_estimated_never_a_false_zero(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(text="ok", include_usage=False))
    usage = model.request(req()).usage
    assert usage.estimated and usage.input_tokens > 0 and usage.output_tokens > 0
    server.push(Turn(text="ok", include_usage=False))
    assert collect(model, req())[1].usage == usage


# -- streaming ----------------------------------------------------------------------------------


def test_stream_text(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(Turn(text="Hello, world!", pieces=["Hel", "lo, ", "world", "!"],
                     prompt_tokens=50, completion_tokens=4, cached_tokens=32))
    deltas, resp = collect(model, req())
    assert deltas == ["Hel", "lo, ", "world", "!"]
    assert resp.text == "Hello, world!"
    assert resp.stop_reason == "end_turn"
    assert resp.usage == Usage(input_tokens=18, output_tokens=4, cache_read_tokens=32)
    body = server.last.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_assembles_tool_calls_from_pieces(server: FakeOpenAI,
                                                 model: OpenAIModel) -> None:
    server.push(Turn(text="Let me look.", pieces=["Let me", " look."], tool_calls=[
        ToolCall("call_1", "get_weather", '{"city": "Paris", "units": "C"}',
                 pieces=['{"ci', 'ty": "Par', 'is", "units"', ': "C"}']),
        ToolCall("call_2", "get_weather", '{"city": "Oslo"}', pieces=['{"city":', ' "Oslo"}']),
    ]))
    deltas, resp = collect(model, req(tools=[WEATHER]))
    assert deltas == ["Let me", " look."]
    assert resp.stop_reason == "tool_use"
    assert resp.content == [
        TextBlock(text="Let me look."),
        ToolUseBlock(id="call_1", name="get_weather", input={"city": "Paris", "units": "C"}),
        ToolUseBlock(id="call_2", name="get_weather", input={"city": "Oslo"}),
    ]


def test_stream_error_event_becomes_model_error(server: FakeOpenAI,
                                                model: OpenAIModel) -> None:
    server.push(StreamError(before=["partial "]))
    deltas: list[str] = []
    with pytest.raises(ModelError) as info:
        for event in model.stream(req()):
            if isinstance(event, TextDelta):
                deltas.append(event.text)
    assert deltas == ["partial "]
    assert "error while processing" in str(info.value)


def test_stream_http_error_is_mapped(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(ErrorReply(401, "Incorrect API key provided.", "invalid_request_error",
                           "invalid_api_key"))
    with pytest.raises(AuthenticationError) as info:
        list(model.stream(req()))
    assert info.value.status == 401


# -- errors -------------------------------------------------------------------------------------


def test_rate_limit(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(ErrorReply(429, "Rate limit reached for gpt-4o.", "requests",
                           "rate_limit_exceeded", headers={"retry-after": "7"}))
    with pytest.raises(RateLimitError) as info:
        model.request(req())
    err = info.value
    assert err.status == 429 and err.retryable
    assert err.provider == "openai"
    assert err.request_id == "req_0001"
    assert err.retry_after == 7.0
    assert "Rate limit reached" in str(err) and "req_0001" in str(err)


@pytest.mark.parametrize("status", [503, 529])
def test_overloaded(server: FakeOpenAI, model: OpenAIModel, status: int) -> None:
    server.push(ErrorReply(status, "The engine is currently overloaded.", "server_error"))
    with pytest.raises(OverloadedError) as info:
        model.request(req())
    assert info.value.status == status and info.value.request_id == "req_0001"


def test_context_too_long(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(ErrorReply(
        400, "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130000 tokens.", "invalid_request_error", "context_length_exceeded"))
    with pytest.raises(ContextTooLongError) as info:
        model.request(req())
    assert info.value.status == 400 and info.value.request_id == "req_0001"


def test_context_too_long_recognised_by_message(server: FakeOpenAI) -> None:
    # vLLM says so only in the message, with no OpenAI error code.
    local = OpenAIModel("x", base_url=server.base_url, environ={}, provider="vllm")
    server.push(ErrorReply(400, "This model's maximum context length is 4096 tokens. However, "
                                "you requested 5000 tokens.", "BadRequestError"))
    with pytest.raises(ContextTooLongError) as info:
        local.request(req())
    assert info.value.provider == "vllm"


@pytest.mark.parametrize("status", [400, 422])
def test_bad_request(server: FakeOpenAI, model: OpenAIModel, status: int) -> None:
    server.push(ErrorReply(status, "Invalid value for 'temperature'.", "invalid_request_error",
                           "invalid_value"))
    with pytest.raises(BadRequestError) as info:
        model.request(req())
    assert info.value.status == status
    assert "Invalid value for 'temperature'." in str(info.value)


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_never_leaks_the_key(server: FakeOpenAI, model: OpenAIModel,
                                            status: int) -> None:
    server.push(ErrorReply(status, f"Incorrect API key provided: {KEY}.",
                           "invalid_request_error", "invalid_api_key"))
    with pytest.raises(AuthenticationError) as info:
        model.request(req())
    err = info.value
    assert err.status == status and err.request_id == "req_0001"
    assert KEY not in str(err) and KEY not in repr(err.args)


def test_other_status_is_model_error(server: FakeOpenAI, model: OpenAIModel) -> None:
    server.push(ErrorReply(404, "The model `gpt-9` does not exist.", "invalid_request_error",
                           "model_not_found"))
    with pytest.raises(ModelError) as info:
        model.request(req())
    assert type(info.value) is ModelError and info.value.status == 404


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAIModel("gpt-4o", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1",
                       environ={}, max_retries=0)
    with pytest.raises(ModelConnectionError) as info:
        dead.request(req())
    assert info.value.retryable and info.value.status is None
    assert KEY not in str(info.value)


def test_timeout(server: FakeOpenAI) -> None:
    slow = OpenAIModel("gpt-4o", api_key=KEY, base_url=server.base_url, environ={},
                       max_retries=0, timeout=0.2)
    server.push(Turn(text="late", delay=1.0))
    with pytest.raises(ModelConnectionError, match="timed out"):
        slow.request(req())


# -- retries (the SDK's) ------------------------------------------------------------------------


def test_sdk_retries_a_rate_limit_then_succeeds(server: FakeOpenAI) -> None:
    retrying = OpenAIModel("gpt-4o", api_key=KEY, base_url=server.base_url, environ={},
                           max_retries=2)
    server.push(ErrorReply(429, "slow down", "requests", "rate_limit_exceeded",
                           headers={"retry-after-ms": "1"}),
                Turn(text="made it"))
    start = time.monotonic()
    assert retrying.request(req()).text == "made it"
    assert time.monotonic() - start < 2
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body


def test_persistent_overload_raises_after_retries(server: FakeOpenAI) -> None:
    retrying = OpenAIModel("gpt-4o", api_key=KEY, base_url=server.base_url, environ={},
                           max_retries=2)
    busy = ErrorReply(503, "overloaded", "server_error", headers={"retry-after-ms": "1"})
    server.push(busy, busy, busy)
    with pytest.raises(OverloadedError) as info:
        retrying.request(req())
    assert len(server.requests) == 3
    assert info.value.request_id == "req_0003"


# -- configuration ------------------------------------------------------------------------------


def test_ollama_needs_no_openai_key(server: FakeOpenAI) -> None:
    m = get_model("ollama:llama3", environ={}, base_url=server.base_url)
    assert isinstance(m, OpenAIModel) and m.provider == "ollama" and m.name == "llama3"
    server.push(Turn(text="local hello", prompt_tokens=1000, completion_tokens=1000))
    resp = m.request(req())
    assert resp.text == "local hello"
    assert server.last.body["model"] == "llama3"
    assert server.last.headers["authorization"].startswith("Bearer ")
    assert m.price_key == "ollama:llama3"
    assert cost_of(m.price_key, resp.usage) == 0


def test_local_server_url_from_environment(server: FakeOpenAI) -> None:
    m = get_model("ollama:llama3", environ={"OLLAMA_BASE_URL": server.base_url})
    server.push(Turn(text="hi"))
    assert m.request(req()).text == "hi"


def test_vllm_with_base_url(server: FakeOpenAI) -> None:
    m = get_model("vllm:x", base_url=server.base_url, environ={})
    assert m.provider == "vllm" and m.price_key == "vllm:x"
    server.push(Turn(text="from vllm", pieces=["from ", "vllm"]))
    deltas, resp = collect(m, req())  # type: ignore[arg-type]
    assert deltas == ["from ", "vllm"] and resp.text == "from vllm"
    assert server.last.body["model"] == "x"


def test_custom_base_url_without_key_uses_placeholder(server: FakeOpenAI) -> None:
    m = OpenAIModel("my-model", environ={"OPENAI_BASE_URL": server.base_url})
    server.push(Turn(text="ok"))
    m.request(req())
    assert server.last.headers["authorization"] == "Bearer sk-no-key-required"


def test_openai_key_and_url_from_environ(server: FakeOpenAI) -> None:
    m = get_model("gpt-4o", environ={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url})
    assert isinstance(m, OpenAIModel) and m.provider == "openai"
    assert m.price_key == "gpt-4o" and price_for(m.price_key) is not None
    server.push(Turn(text="ok"))
    m.request(req())
    assert server.last.headers["authorization"] == f"Bearer {KEY}"


def test_missing_openai_key_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-process-env-must-be-ignored")
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY") as info:
        get_model("gpt-4o", environ={})
    assert info.value.env_var == "OPENAI_API_KEY" and info.value.model == "gpt-4o"


# -- a whole tool exchange ----------------------------------------------------------------------


def test_tool_exchange_round_trip(server: FakeOpenAI, model: OpenAIModel) -> None:
    """User asks, the model calls two tools (streamed in pieces), the results go back as
    role "tool" messages right after the assistant's tool_calls, and the model answers."""
    system = [TextBlock(text="Be brief.")]
    history = [Message.user("Weather in Paris and Atlantis?")]
    server.push(Turn(text=None, tool_calls=[
        ToolCall("call_p", "get_weather", '{"city": "Paris"}', pieces=['{"city"', ': "Paris"}']),
        ToolCall("call_x", "get_weather", '{"city": "Atlantis"}'),
    ]))
    _, first = collect(model, req(*history, system=system, tools=[WEATHER]))
    assert first.stop_reason == "tool_use"
    history.append(first.message)
    history.append(Message(role="user", content=[
        ToolResultBlock(tool_use_id="call_p", content="18C, sunny"),
        ToolResultBlock(tool_use_id="call_x", content="no such city", is_error=True),
    ]))

    server.push(Turn(text="Paris: 18C and sunny. Atlantis: unknown."))
    second = model.request(req(*history, system=system, tools=[WEATHER]))
    assert second.text == "Paris: 18C and sunny. Atlantis: unknown."

    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Atlantis?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_p", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_x", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Atlantis"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_p", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_x", "content": "[tool error] no such city"},
    ]
    assert to_openai_messages(system, history) == expected
    assert server.last.body["messages"] == expected
    # The arguments the model streamed survive the round trip as the same JSON.
    for call in server.last.body["messages"][2]["tool_calls"]:
        assert json.loads(call["function"]["arguments"])["city"] in {"Paris", "Atlantis"}
