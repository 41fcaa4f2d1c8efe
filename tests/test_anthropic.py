"""AnthropicModel against a fake Anthropic API on loopback: real SDK, real HTTP and SSE."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

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
from colloquy.messages import Message, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock
from colloquy.models import get_model
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.base import ModelRequest, ModelResponse, TextDelta, ThinkingDelta, ToolSpec
from colloquy.usage import Usage
from fake_anthropic import (
    FakeAnthropic,
    Reply,
    count,
    error,
    message,
    stream,
    stream_error_midway,
    text,
    sign,
    thinking,
    tool_use,
)

KEY = "sk-ant-test-0123456789-secret"
FAST_RETRY = {"retry-after-ms": "5"}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
def model(fake: FakeAnthropic) -> Iterator[AnthropicModel]:
    m = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=2)
    yield m
    m.close()


WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city.",
    input_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


def make_request(**overrides: object) -> ModelRequest:
    fields: dict[str, object] = {
        "model": "claude-sonnet-4-6",
        "system": [TextBlock(text="You are terse.")],
        "messages": [Message.user("Hello")],
        "max_tokens": 256,
    }
    fields.update(overrides)
    return ModelRequest(**fields)  # type: ignore[arg-type]


# -- what goes on the wire -------------------------------------------------------------------


def test_request_body_and_headers(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(message(text("Hi.")))
    history = [
        Message.user("Weather in Paris?"),
        Message(role="assistant", content=[ToolUseBlock(id="tu_1", name="get_weather",
                                                        input={"city": "Paris"})]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="tu_1", content="12C")]),
    ]
    req = make_request(messages=history, tools=[WEATHER], temperature=0.3)

    model.request(req)

    (sent,) = fake.requests
    assert sent.path == "/v1/messages"
    assert sent.body == req.to_anthropic()  # exactly colloquy's body, nothing added or lost
    assert sent.body["model"] == "claude-sonnet-4-6"
    assert sent.body["max_tokens"] == 256
    assert sent.body["temperature"] == 0.3
    assert sent.body["system"] == [{"type": "text", "text": "You are terse."}]
    assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
    assert sent.body["messages"][1]["content"][0] == {
        "type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"},
    }
    assert sent.body["tools"] == [WEATHER.to_anthropic()]
    assert "stream" not in sent.body
    # SDK 2.x sends an API key as a Bearer token (older SDKs used x-api-key).
    assert sent.headers.get("x-api-key") == KEY or sent.headers.get("authorization") == (
        f"Bearer {KEY}"
    )
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", sent.headers["anthropic-version"])


def test_optional_fields_are_left_out(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(message(text("ok")))
    model.request(make_request(system=[]))
    body = fake.requests[0].body
    assert set(body) == {"model", "max_tokens", "messages"}


# -- replies -----------------------------------------------------------------------------------


def test_request_maps_text_tool_use_and_usage(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(
        message(
            thinking("Let me look it up."),
            text("Checking."),
            tool_use("toolu_1", "get_weather", {"city": "Paris", "days": [1, 2]}),
            stop_reason="tool_use",
            model="claude-sonnet-4-6-20260101",
            input_tokens=12,
            output_tokens=34,
            cache_write=56,
            cache_read=78,
        )
    )

    response = model.request(make_request(tools=[WEATHER]))

    assert response.content == [
        ThinkingBlock(thinking="Let me look it up.", signature=sign("Let me look it up.")),
        TextBlock(text="Checking."),
        ToolUseBlock(id="toolu_1", name="get_weather", input={"city": "Paris", "days": [1, 2]}),
    ]
    assert response.stop_reason == "tool_use"
    assert response.model == "claude-sonnet-4-6-20260101"
    assert response.id is not None and response.id.startswith("msg_fake_")
    assert response.usage == Usage(
        input_tokens=12, output_tokens=34, cache_write_tokens=56, cache_read_tokens=78
    )


def test_missing_cache_counts_are_zero(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(message(text("ok"), input_tokens=3, output_tokens=1))
    response = model.request(make_request())
    assert response.usage == Usage(input_tokens=3, output_tokens=1)
    assert response.text == "ok"
    assert response.stop_reason == "end_turn"


def test_stream_yields_deltas_in_order_then_response(
    fake: FakeAnthropic, model: AnthropicModel
) -> None:
    fake.enqueue(
        stream(
            text("Hello there, friend."),
            tool_use("toolu_9", "get_weather", {"city": "Oslo", "units": "metric"}),
            stop_reason="tool_use",
            input_tokens=21,
            output_tokens=17,
            cache_write=5,
            cache_read=400,
            chunk=3,
        )
    )

    events = list(model.stream(make_request(tools=[WEATHER])))

    assert fake.requests[0].body["stream"] is True
    deltas = [e for e in events[:-1]]
    assert all(isinstance(e, TextDelta) for e in deltas)
    assert [d.text for d in deltas] == ["Hel", "lo ", "the", "re,", " fr", "ien", "d."]
    final = events[-1]
    assert isinstance(final, ModelResponse)
    assert final.text == "Hello there, friend."
    assert final.tool_uses == [
        ToolUseBlock(id="toolu_9", name="get_weather", input={"city": "Oslo", "units": "metric"})
    ]
    assert final.stop_reason == "tool_use"
    assert final.usage == Usage(
        input_tokens=21, output_tokens=17, cache_write_tokens=5, cache_read_tokens=400
    )
    assert final.id is not None


def test_stream_yields_thinking_deltas_apart_and_keeps_the_signed_block(
    fake: FakeAnthropic, model: AnthropicModel
) -> None:
    fake.enqueue(stream(thinking("hmm, let me see"), text("Answer.")))
    events = list(model.stream(make_request()))
    assert "".join(e.thinking for e in events if isinstance(e, ThinkingDelta)) == "hmm, let me see"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Answ", "er."]
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert all(isinstance(e, ThinkingDelta) for e in events[:first_text])
    final = events[-1]
    assert isinstance(final, ModelResponse)
    assert final.content == [ThinkingBlock(thinking="hmm, let me see", signature=sign("hmm, let me see")),
                             TextBlock(text="Answer.")]


def test_count_tokens(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(count(1234))
    req = make_request(tools=[WEATHER], temperature=0.5)

    assert model.count_tokens(req) == 1234

    (sent,) = fake.requests
    assert sent.path == "/v1/messages/count_tokens"
    expected = req.to_anthropic()
    for key in ("max_tokens", "temperature"):
        expected.pop(key)
    assert sent.body == expected


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected", "status"),
    [
        (error(429, "rate_limit_error", "Number of requests has exceeded your rate limit",
               headers={"retry-after": "17"}), RateLimitError, 429),
        (error(529, "overloaded_error", "Overloaded"), OverloadedError, 529),
        (error(503, "api_error", "Service unavailable"), OverloadedError, 503),
        (error(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
         ContextTooLongError, 400),
        (error(400, "invalid_request_error", "messages: roles must alternate"),
         BadRequestError, 400),
        (error(422, "invalid_request_error", "unprocessable"), BadRequestError, 422),
        (error(401, "authentication_error", "invalid x-api-key"), AuthenticationError, 401),
        (error(403, "permission_error", "no access to this model"), AuthenticationError, 403),
        (error(404, "not_found_error", "model: claude-nope"), ModelError, 404),
        (error(500, "api_error", "Internal server error"), ModelError, 500),
    ],
    ids=["429", "529", "503", "too-long", "400", "422", "401", "403", "404", "500"],
)
def test_status_errors_map_to_colloquy_errors(
    fake: FakeAnthropic, reply: Reply, expected: type[ModelError], status: int
) -> None:
    # No SDK retries here, so each case is one request and one error.
    m = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=0)
    fake.enqueue(reply)

    with pytest.raises(ModelError) as info:
        m.request(make_request())

    err = info.value
    assert type(err) is expected
    assert err.provider == "anthropic"
    assert err.status == status
    assert err.request_id is not None and err.request_id.startswith("req_fake_")
    assert err.request_id in str(err)
    assert reply.json["error"]["message"] in str(err)
    assert KEY not in str(err) and KEY not in repr(err)
    if status == 429:
        assert err.retry_after == 17.0
        assert err.retryable


def test_wrong_key_is_authentication_error_without_the_key(fake: FakeAnthropic) -> None:
    wrong = "sk-ant-wrong-key-0000"
    m = AnthropicModel(api_key=wrong, base_url=fake.base_url, environ={}, max_retries=0)
    with pytest.raises(AuthenticationError) as info:
        m.request(make_request())
    assert info.value.status == 401
    assert wrong not in str(info.value)


def test_key_is_scrubbed_even_if_the_server_echoes_it(fake: FakeAnthropic) -> None:
    m = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=0)
    fake.enqueue(error(400, "invalid_request_error", f"bad header value {KEY}"))
    with pytest.raises(BadRequestError) as info:
        m.request(make_request())
    assert KEY not in str(info.value)
    assert "[redacted]" in str(info.value)


def test_sdk_retries_a_429_then_succeeds(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(
        error(429, "rate_limit_error", "slow down", headers=FAST_RETRY),
        message(text("made it")),
    )
    assert model.request(make_request()).text == "made it"
    assert len(fake.requests) == 2
    assert [r.headers["x-stainless-retry-count"] for r in fake.requests] == ["0", "1"]


def test_persistent_529_raises_overloaded_after_all_retries(fake: FakeAnthropic) -> None:
    m = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=2)
    fake.enqueue(*[error(529, "overloaded_error", "Overloaded", headers=FAST_RETRY)] * 3)
    with pytest.raises(OverloadedError) as info:
        m.request(make_request())
    assert len(fake.requests) == 3
    assert info.value.status == 529
    assert info.value.retryable


def test_stream_retries_before_the_stream_starts(
    fake: FakeAnthropic, model: AnthropicModel
) -> None:
    fake.enqueue(error(529, "overloaded_error", "Overloaded", headers=FAST_RETRY), stream(text("ok")))
    events = list(model.stream(make_request()))
    assert len(fake.requests) == 2
    assert isinstance(events[-1], ModelResponse) and events[-1].text == "ok"


def test_error_event_mid_stream_is_mapped(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(stream_error_midway(["Once ", "upon "], "overloaded_error", "Overloaded"))
    received: list[str] = []

    with pytest.raises(OverloadedError) as info:
        for event in model.stream(make_request()):
            assert isinstance(event, TextDelta), "no final response after an error"
            received.append(event.text)

    assert received == ["Once ", "upon "]
    assert info.value.status == 529  # the API's status for overloaded_error (the HTTP was 200)
    assert info.value.request_id is not None and info.value.request_id.startswith("req_fake_")
    assert len(fake.requests) == 1  # text was already shown: the SDK must not replay it


def test_stream_status_error_is_mapped(fake: FakeAnthropic) -> None:
    m = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=0)
    fake.enqueue(error(400, "invalid_request_error", "prompt is too long: 300000 tokens > 200000"))
    with pytest.raises(ContextTooLongError) as info:
        list(m.stream(make_request()))
    assert info.value.status == 400


def test_connection_cut_mid_stream_is_connection_error(
    fake: FakeAnthropic, model: AnthropicModel
) -> None:
    reply = stream(text("partial answer"))
    reply.drop_after = 5
    fake.enqueue(reply)
    with pytest.raises(ModelConnectionError) as info:
        list(model.stream(make_request()))
    assert KEY not in str(info.value)


def test_refused_connection_is_connection_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = AnthropicModel(api_key=KEY, base_url=f"http://127.0.0.1:{port}", environ={}, max_retries=0)
    with pytest.raises(ModelConnectionError) as info:
        m.request(make_request())
    assert info.value.provider == "anthropic"
    assert info.value.retryable
    assert KEY not in str(info.value)


def test_timeout_is_connection_error(fake: FakeAnthropic) -> None:
    m = AnthropicModel(
        api_key=KEY, base_url=fake.base_url, environ={}, max_retries=0, timeout=0.2
    )
    slow = message(text("too late"))
    slow.delay = 0.6
    fake.enqueue(slow)
    with pytest.raises(ModelConnectionError, match="timed out"):
        m.request(make_request())


def test_count_tokens_error_is_mapped(fake: FakeAnthropic, model: AnthropicModel) -> None:
    fake.enqueue(error(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(AuthenticationError):
        model.count_tokens(make_request())


# -- construction ------------------------------------------------------------------------------


def test_missing_key_raises_at_construction() -> None:
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY") as info:
        AnthropicModel("claude-haiku-4-5", environ={})
    assert info.value.env_var == "ANTHROPIC_API_KEY"
    assert info.value.model == "claude-haiku-4-5"


def test_key_and_base_url_come_from_environ(fake: FakeAnthropic) -> None:
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.base_url}
    m = get_model("claude-haiku-4-5", environ=env, max_retries=0)
    assert isinstance(m, AnthropicModel)
    assert m.name == "claude-haiku-4-5" and m.provider == "anthropic"
    fake.enqueue(message(text("from env")))
    assert m.request(make_request(model="claude-haiku-4-5")).text == "from env"
    assert fake.requests[0].body["model"] == "claude-haiku-4-5"


def test_arguments_win_over_environ(fake: FakeAnthropic) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-env-key", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    m = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ=env, max_retries=0)
    fake.enqueue(message(text("args")))
    assert m.request(make_request()).text == "args"  # reached the fake, with the right key


def test_ready_client_needs_no_key(fake: FakeAnthropic) -> None:
    import anthropic

    client = anthropic.Anthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)
    m = AnthropicModel("claude-opus-4-6", environ={}, client=client)
    fake.enqueue(message(text("custom client")))
    assert m.request(make_request()).text == "custom client"
