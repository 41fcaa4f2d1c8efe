"""The Anthropic-compatible route's content blocks and errors, through the real ``anthropic``
SDK against a real socket (the fake Anthropic server as the provider):

- a streamed reply's events rebuild exactly the reply's block list, whatever the mix of text,
  thinking, citations, tool_use, server tools and unknown kinds: the SDK's final message of a
  stream equals the non-streamed reply and the stored one (each text block its own block, in
  order, citations as ``citations_delta``);
- every error the route returns has the Messages API's shape
  ``{"type": "error", "error": {"type", "message"}}`` (413, 401, 404, 400, 429, 502, 503, and
  an error event inside a stream);
- a boolean field is a JSON boolean on both compatible routes (``"stream": "yes"`` is a 400).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from colloquy.server.service import RateLimit
from fake_anthropic import (Reply, char_location, cited_text, error, message,
                            redacted_thinking, server_tool_use, stream, stream_error_midway, stream_events,
                            text, thinking, tool_use, web_search_result)
from test_compat_anthropic import MODEL, TITLE, WEATHER, Served, serve_claude

SEARCH = [server_tool_use("srvtoolu_1", "web_search", {"query": "q"}),
          web_search_result("srvtoolu_1", ("t", "https://e.x"))]

MIXES: dict[str, list[dict[str, Any]]] = {
    "text, server tool, its result, text": [text("alpha "), *SEARCH, text("omega")],
    "thinking, text, text": [thinking("th"), text("alpha "), text("omega")],
    "one cited text": [cited_text("cited", char_location("c"))],
    "cited text, unknown kind, text": [cited_text("cited", char_location("c")),
                                       {"type": "brand_new", "x": 1}, text("end")],
    "text, cited text, text": [text("As "), cited_text("it says", char_location("it", 0, 2, "Report")),
                               text(", so.")],
    "server tool first, then text": [*SEARCH, text("found")],
    "thinking, text, tool_use": [thinking("plan"), text("Checking."),
                                 tool_use("toolu_1", "get_weather", {"city": "Oslo"})],
    "redacted thinking, thinking, text": [redacted_thinking(), thinking("more"), text("ok")],
    "text, text, text": [text("one "), text("two "), text("three")],
}


def _last_reply(served: Served, name: str) -> list[dict[str, Any]]:
    content = served.log(name)[-1]["content"]
    assert isinstance(content, list)
    return content


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve_claude(tmp_path)


def _plain(value: Any) -> Any:
    """JSON values without nulls (the SDK's models and the stored blocks spell an absent
    field differently)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dump(blocks: Any) -> list[dict[str, Any]]:
    return [_plain(b) for b in blocks]


@pytest.mark.parametrize("mix", list(MIXES))
def test_a_streamed_reply_rebuilds_the_replys_blocks_exactly(served: Served, mix: str) -> None:
    content = MIXES[mix]
    hi = [{"role": "user", "content": "go"}]
    named = {"X-Colloquy-Conversation": "c"}
    tools: Any = [WEATHER]
    served.fake.enqueue(stream(*content), TITLE, message(*content))
    with served.client.messages.stream(model=MODEL, max_tokens=3000, messages=hi,
                                       tools=tools, extra_headers=named) as s:
        events = list(s)
        final = s.get_final_message()
    streamed_stored = _last_reply(served, "c")
    if final.stop_reason == "tool_use":  # answer the call so the next turn is a new message
        hi = [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}]}]
    whole = served.client.messages.create(model=MODEL, max_tokens=3000, messages=hi,
                                          tools=tools, extra_headers=named)
    assert _dump(final.content) == _dump(whole.content) == _dump(streamed_stored)
    assert _dump(whole.content) == _dump(_last_reply(served, "c"))
    assert len(final.content) == len(content)
    # one start and one stop per block, in order, each delta inside its own block
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == list(range(len(content)))
    open_block = None
    for e in events:
        if e.type == "content_block_start":
            open_block = e.index
        elif e.type == "content_block_delta":
            assert e.index == open_block
        elif e.type == "content_block_stop":
            open_block = None


def test_text_streams_live_before_the_reply_ends(served: Served) -> None:
    """The first text block still streams as it comes (several deltas), not only whole."""
    served.fake.enqueue(Reply(events=stream_events(
        thinking("th"), text("one two three four five six"), chunk=4), event_delay=0.05), TITLE)
    with served.client.messages.stream(model=MODEL, max_tokens=3000, messages=[
            {"role": "user", "content": "go"}], extra_headers={"X-Colloquy-Conversation": "l"}
            ) as s:
        deltas = [e for e in s if e.type == "content_block_delta"
                  and e.delta.type == "text_delta"]
    assert len(deltas) > 1 and {e.index for e in deltas} == {1}


def _anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body == {"type": "error", "error": {"type": kind, "message": body["error"]["message"]}}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


def test_every_error_of_the_route_has_the_messages_apis_shape(tmp_path: Path) -> None:
    hi = [{"role": "user", "content": "hi"}]
    for served in serve_claude(tmp_path, max_body_bytes=2000,
                         rate_limit=RateLimit(requests=4, per=60.0)):
        url = served.url + "/v1/messages"
        key = {"x-api-key": served.token, "anthropic-version": "2023-06-01"}
        body = {"model": MODEL, "max_tokens": 10, "messages": hi}
        big = {**body, "messages": [{"role": "user", "content": "x" * 5000}]}
        _anthropic_error(httpx.post(url, headers=key, json=big), 413, "request_too_large")
        chunked = httpx.post(url, headers=key, content=iter([b'{"model": "', b"x" * 5000]))
        _anthropic_error(chunked, 413, "request_too_large")  # no Content-Length: counted
        missing = _anthropic_error(httpx.post(url, json=body), 401, "authentication_error")
        assert "x-api-key" in missing and "Bearer" not in missing
        _anthropic_error(httpx.post(url, headers={"x-api-key": "nope"}, json=body), 401,
                         "authentication_error")
        _anthropic_error(httpx.post(url, headers=key, json={**body, "model": "claude-x"}),
                         404, "not_found_error")
        _anthropic_error(httpx.post(url, headers=key, json={**body, "max_tokens": "many"}),
                         400, "invalid_request_error")
        served.fake.enqueue(error(529, "overloaded_error", "Overloaded"))
        _anthropic_error(httpx.post(url, headers=key, json=body), 503, "overloaded_error")
        for _ in range(10):  # the limiter counts the requests that got past the token
            r = httpx.post(url, headers=key, json={**body, "model": "claude-x"})
            if r.status_code != 404:
                break
        _anthropic_error(r, 429, "rate_limit_error")
    for served in serve_claude(tmp_path / "b"):
        url = served.url + "/v1/messages"
        key = {"x-api-key": served.token}
        served.fake.enqueue(error(400, "invalid_request_error", "refused"))
        _anthropic_error(httpx.post(url, headers=key, json=body), 502, "api_error")
        served.fake.enqueue(stream_error_midway(["Hel", "lo"]))
        with pytest.raises(anthropic.APIStatusError) as midway:
            with served.client.messages.stream(model=MODEL, max_tokens=10, messages=hi) as s:
                list(s)
        event = midway.value.body
        assert isinstance(event, dict) and event["type"] == "error"
        assert set(event["error"]) == {"type", "message"}


@pytest.mark.parametrize("flag", ["yes", "true", 1, 0, None])
def test_a_boolean_is_a_json_boolean_on_both_compatible_routes(served: Served,
                                                               flag: Any) -> None:
    hi = [{"role": "user", "content": "hi"}]
    r = httpx.post(served.url + "/v1/messages", headers={"x-api-key": served.token}, json={
        "model": MODEL, "max_tokens": 10, "messages": hi, "stream": flag})
    assert "stream" in _anthropic_error(r, 400, "invalid_request_error")
    r = httpx.post(served.url + "/v1/chat/completions",
                   headers={"Authorization": f"Bearer {served.token}"},
                   json={"model": MODEL, "messages": hi, "stream": flag})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream", r.text
    r = httpx.post(served.url + "/v1/chat/completions",
                   headers={"Authorization": f"Bearer {served.token}"},
                   json={"model": MODEL, "messages": hi, "stream": True,
                         "stream_options": {"include_usage": flag}})
    assert r.status_code == 400, r.text
    assert served.fake.requests == []
