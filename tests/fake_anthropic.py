"""A small fake of the Anthropic Messages API on loopback, speaking the real wire protocol.

The adapter is tested through the real SDK and real HTTP (JSON bodies, SSE over chunked
transfer encoding, error bodies and headers), so what is tested is what runs against the API;
only the model behind the server is scripted. Tests queue :class:`Reply` objects (built with
:func:`message`, :func:`stream`, :func:`error`, ...) and read back :attr:`FakeAnthropic.requests`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_wire import Drops, wait_unless_dropped


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any


@dataclass
class Reply:
    """One scripted answer. ``events`` makes it an SSE stream of (event name, data) pairs;
    ``drop_after`` closes the connection mid-stream after that many events. ``delay`` waits
    before answering and ``event_delay`` between streamed events, both noticing a client that
    hangs up meanwhile (recorded in :attr:`FakeAnthropic.drops`)."""

    status: int = 200
    json: Any = None
    events: list[tuple[str, dict[str, Any]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_after: int | None = None
    event_delay: float = 0.0


_ids = itertools.count(1)


def _usage(
    input_tokens: int, output_tokens: int, cache_write: int | None, cache_read: int | None
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


#: The fake's signing key: a thinking block's signature is an HMAC of its text, so the fake,
#: like the API, can tell a block replayed unmodified from one that was altered or made up.
_KEY = b"fake-anthropic-thinking"


def sign(value: str) -> str:
    return "sig_" + hmac.new(_KEY, value.encode(), hashlib.sha256).hexdigest()[:32]


def thinking(value: str) -> dict[str, Any]:
    """A thinking block with the signature the fake will accept back (and only for this text)."""
    return {"type": "thinking", "thinking": value, "signature": sign(value)}


def redacted_thinking(secret: str = "opaque") -> dict[str, Any]:
    """A redacted thinking block; its ``data`` is checked like a signature when replayed."""
    return {"type": "redacted_thinking", "data": f"enc_{secret}_{sign('redacted:' + secret)}"}


def cited_text(value: str, *citations: dict[str, Any]) -> dict[str, Any]:
    """A text block that cites its sources (``citations_delta`` events when streamed)."""
    return {"type": "text", "text": value, "citations": list(citations)}


def char_location(cited: str, document_index: int = 0, start: int = 0,
                  title: str | None = None) -> dict[str, Any]:
    return {"type": "char_location", "cited_text": cited, "document_index": document_index,
            "document_title": title, "start_char_index": start,
            "end_char_index": start + len(cited)}


def server_tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "server_tool_use", "id": id, "name": name, "input": input}


def web_search_result(tool_use_id: str, *results: tuple[str, str]) -> dict[str, Any]:
    """A ``web_search_tool_result`` with (url, title) results and their encrypted content."""
    return {"type": "web_search_tool_result", "tool_use_id": tool_use_id, "content": [
        {"type": "web_search_result", "url": url, "title": title,
         "encrypted_content": f"EncryptedContent{sign(url)}", "page_age": None}
        for url, title in results]}


def message(
    *content: dict[str, Any],
    stop_reason: str = "end_turn",
    model: str = "claude-sonnet-4-6",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_write: int | None = None,
    cache_read: int | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A complete (non-streamed) Message, as ``POST /v1/messages`` returns it."""
    return Reply(
        json={
            "id": f"msg_fake_{next(_ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": list(content),
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": _usage(input_tokens, output_tokens, cache_write, cache_read),
        },
        headers=dict(headers or {}),
    )


def _pieces(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def stream_events(
    *content: dict[str, Any],
    stop_reason: str = "end_turn",
    model: str = "claude-sonnet-4-6",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_write: int | None = None,
    cache_read: int | None = None,
    chunk: int = 4,
) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence the API streams for a message with this content: text arrives as
    ``text_delta`` pieces of ``chunk`` characters, tool input as ``input_json_delta`` pieces of
    its JSON text (starting with an empty one, as the API does)."""
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_fake_{next(_ids):04d}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _usage(input_tokens, 1, cache_write, cache_read),
                },
            },
        )
    ]
    for index, block in enumerate(content):
        kind = block["type"]
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            if block.get("citations"):  # each citation arrives before the text it covers
                start["citations"] = []
                deltas += [{"type": "citations_delta", "citation": c} for c in block["citations"]]
            deltas += [{"type": "text_delta", "text": p} for p in _pieces(block["text"], chunk)]
        elif kind in ("tool_use", "server_tool_use"):
            start = {**block, "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": p} for p in _pieces(raw, chunk)
            ]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p}
                      for p in _pieces(block["thinking"], chunk * 4)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            # redacted_thinking, server tool results and any other block arrive whole in
            # content_block_start, with no deltas (the API's shape for them).
            start = dict(block)
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": index,
                                     "content_block": start})
        )
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        for delta in deltas:
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": index,
                                         "delta": delta})
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def stream(*content: dict[str, Any], **kwargs: Any) -> Reply:
    """A streamed Message (the reply to ``"stream": true``)."""
    return Reply(events=stream_events(*content, **kwargs))


def either(*content: dict[str, Any], **kwargs: Any) -> Reply:
    """A Message streamed or not, as the request asks (``"stream": true`` or not): for tests
    that run one script through routes that stream and routes that do not."""
    return Reply(json=message(*content, **kwargs).json, events=stream_events(*content, **kwargs))


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error(
    status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None
) -> Reply:
    """An error response in the API's shape (the server adds a ``request-id`` header)."""
    return Reply(status=status, json=error_body(error_type, message), headers=dict(headers or {}))


def stream_error_midway(
    texts: list[str], error_type: str = "overloaded_error", message: str = "Overloaded"
) -> Reply:
    """A stream that starts normally (HTTP 200, some text) and then sends ``event: error``."""
    events = stream_events(text("".join(texts)), chunk=max(1, max(map(len, texts), default=1)))
    head = [e for e in events if e[0] in ("message_start", "content_block_start", "ping")]
    deltas = [
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": t}})
        for t in texts
    ]
    return Reply(events=head + deltas + [("error", error_body(error_type, message))])


_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _misplaced(kind: str, role: Any) -> bool:
    """A block the Messages API refuses in a message of ``role``: what only the model writes
    (thinking, tool calls, server tools' calls and results) outside an assistant message, a
    tool_result outside a user message."""
    if kind in ("thinking", "redacted_thinking", "tool_use", "server_tool_use") or (
            kind.endswith("_tool_result") and kind != "tool_result"):
        return role != "assistant"
    return kind == "tool_result" and role != "user"


def request_problem(body: Any) -> str | None:
    """The first rule of the Messages API that ``body`` breaks, worded as the API's 400 says it
    (invalid_request_error), or None. The real API checks these; so does this fake, so a test
    against it fails where production would. Sources: the Messages API reference (roles, tool
    use, prompt caching pages) and the errors it returns."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return "messages: Field required"
    marks = 0
    for i, block in enumerate(_blocks(body.get("system"))):
        marks += bool(block.get("cache_control"))
        if block.get("type") == "text" and not str(block.get("text", "")).strip():
            return "system: text content blocks must contain non-whitespace text"
    marks += sum(bool(t.get("cache_control")) for t in body.get("tools") or [])
    choice = body.get("tool_choice")
    if choice is not None:
        if not body.get("tools"):
            return "tool_choice may only be specified while providing tools"
        if choice.get("type") == "tool" and choice.get("name") not in {
                t.get("name") for t in body["tools"]}:
            return f"tool_choice: tool {choice.get('name')!r} not found in tools"
    messages = body["messages"]
    if messages and messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    seen: set[str] = set()
    for i, m in enumerate(messages):
        blocks = _blocks(m.get("content"))
        if not blocks:
            return f"messages.{i}: all messages must have non-empty content"
        previous = _blocks(messages[i - 1].get("content")) if i else []
        asked = {b.get("id") for b in previous if b.get("type") == "tool_use"}
        results: set[Any] = set()
        for k, b in enumerate(blocks):
            marks += bool(b.get("cache_control"))
            kind = b.get("type")
            if _misplaced(str(kind), m.get("role")):
                # (the API's 400 names the block; this wording is the fake's own)
                return (f"messages.{i}.content.{k}: `{kind}` blocks are not allowed in "
                        f"`{m.get('role')}` messages")
            if kind == "text" and not str(b.get("text", "")).strip():
                return "messages: text content blocks must contain non-whitespace text"
            if kind == "tool_use":
                tool_id = str(b.get("id", ""))
                if not _TOOL_ID.match(tool_id):
                    return (f"messages.{i}.content.{k}.tool_use.id: String should match "
                            f"pattern '^[a-zA-Z0-9_-]+$'")
                if tool_id in seen:
                    return f"messages.{i}.content.{k}: `tool_use` ids must be unique"
                seen.add(tool_id)
            if kind == "tool_result":
                for part in b.get("content") if isinstance(b.get("content"), list) else []:
                    marks += bool(part.get("cache_control"))
                if b.get("tool_use_id") in results:
                    return (f"messages.{i}.content.{k}: each tool_use must have a single result. "
                            f"Found multiple `tool_result` blocks with id: {b.get('tool_use_id')}")
                results.add(b.get("tool_use_id"))
                if b.get("tool_use_id") not in asked:
                    return (f"messages.{i}.content.{k}: unexpected `tool_use_id` found in "
                            f"`tool_result` blocks: {b.get('tool_use_id')}. Each `tool_result` "
                            "block must have a corresponding `tool_use` block in the previous "
                            "message.")
        uses = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
        if uses:
            following = _blocks(messages[i + 1].get("content")) if i + 1 < len(messages) else []
            answered = {b.get("tool_use_id") for b in following if b.get("type") == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing and i + 1 < len(messages):
                return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(map(str, missing))}. Each `tool_use` "
                        "block must have a corresponding `tool_result` block in the next message.")
    if marks > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {marks}."
    if messages and messages[-1].get("role") == "assistant":
        last = _blocks(messages[-1].get("content"))
        if last and last[-1].get("type") == "text" and last[-1]["text"] != last[-1]["text"].rstrip():
            return "messages: final assistant content cannot end with trailing whitespace"
    return None


_DOCUMENT_SOURCES = {
    "base64": ("media_type", "data"), "url": ("url",), "text": ("media_type", "data"),
    "content": ("content",), "file": ("file_id",),
}


def _walk(blocks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every block, including those inside tool results."""
    for b in blocks:
        yield b
        if b.get("type") == "tool_result" and isinstance(b.get("content"), list):
            yield from b["content"]


def content_problem(body: Any) -> str | None:
    """The first rule of extended thinking or of the content blocks that ``body`` breaks, as
    the API's 400 words it, or None. Sources: the extended-thinking page (budget, temperature,
    "Preserving thinking blocks", toggling within a tool loop) and the API's error messages."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    config = body.get("thinking") or {}
    enabled = config.get("type") == "enabled"
    if enabled:
        budget = config.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= int(body.get("max_tokens") or 0):
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
        if body.get("temperature") not in (None, 1, 1.0):
            return ("`temperature` may only be set to 1 when thinking is enabled or in "
                    "streaming mode.")
    messages = body["messages"]
    for i, m in enumerate(messages):
        for k, b in enumerate(_walk(_blocks(m.get("content")))):
            kind = b.get("type")
            if kind == "thinking" and b.get("signature") != sign(str(b.get("thinking", ""))):
                return f"messages.{i}.content.{k}: Invalid `signature` in `thinking` block"
            if kind == "redacted_thinking":
                data = str(b.get("data", ""))
                secret = data.removeprefix("enc_").rpartition("_")[0]
                if data != redacted_thinking(secret)["data"]:
                    return f"messages.{i}.content.{k}: Invalid `data` in `redacted_thinking` block"
            if kind in ("thinking", "redacted_thinking") and b.get("cache_control"):
                return (f"messages.{i}.content.{k}.{kind}.cache_control: Extra inputs are not "
                        "permitted")
            if kind == "document":
                src = b.get("source") or {}
                needed = _DOCUMENT_SOURCES.get(src.get("type"))
                if needed is None or any(key not in src for key in needed):
                    return f"messages.{i}.content.{k}.document.source: invalid source"
                if src.get("type") == "base64" and src.get("media_type") != "application/pdf":
                    # a base64 source is a PDF (Base64PDFSource); text is a "text" source
                    return (f"messages.{i}.content.{k}.document.source.base64.media_type: "
                            "Input should be 'application/pdf'")
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistant:
        return None
    last = assistant[-1]
    last_blocks = _blocks(messages[last].get("content"))
    follows = _blocks(messages[last + 1].get("content")) if last + 1 < len(messages) else []
    in_tool_loop = any(b.get("type") == "tool_result" for b in follows)
    if enabled and in_tool_loop and last_blocks[0].get("type") not in ("thinking", "redacted_thinking"):
        return ("messages.{}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                "`{}`. When `thinking` is enabled, a final `assistant` message must start with a "
                "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` "
                "blocks).".format(last, last_blocks[0].get("type")))
    if not enabled and last == len(messages) - 1 and any(
            b.get("type") in ("thinking", "redacted_thinking") for b in last_blocks):
        return (f"messages.{last}.content.0: When thinking is disabled, an `assistant` message in "
                "the final position cannot contain `thinking`. To use thinking blocks, enable "
                "`thinking` in your request.")
    return None


def count(input_tokens: int) -> Reply:
    """The reply of ``POST /v1/messages/count_tokens``."""
    return Reply(json={"input_tokens": input_tokens})


class FakeAnthropic:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) answering from a queue of replies.

    With ``api_key`` set, requests that do not carry it (as ``x-api-key`` or a Bearer token)
    get the API's 401 instead of the next reply. A body that breaks one of the API's rules
    (:func:`request_problem`) gets the API's 400 ``invalid_request_error``, as production would;
    ``strict=False`` turns that off. An empty queue answers 400 with ``x-should-retry: false``,
    so a test that under-scripts fails fast and says why.
    """

    def __init__(self, api_key: str | None = None, *, strict: bool = True,
                 title: str | None = None) -> None:
        self.api_key = api_key
        self.strict = strict
        #: When set, a conversation-title request (colloquy's title prompt) is answered with
        #: this title, streamed or not, outside the queue.
        self.title = title
        self.requests: list[Recorded] = []
        #: Answers whose client hung up before they were complete.
        self.drops = Drops()
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Forget the requests and the replies still queued (a server shared by many tests)."""
        with self._lock:
            self.requests.clear()
            self._replies.clear()

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler ------------------------------------------------------------------

    def _record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_reply(self, request: Recorded) -> Reply:
        if self.api_key is not None:
            sent = request.headers.get("x-api-key") or request.headers.get(
                "authorization", ""
            ).removeprefix("Bearer ")
            if sent != self.api_key:
                return error(401, "authentication_error", "invalid x-api-key")
        problem = request_problem(request.body) if self.strict else None
        problem = problem or content_problem(request.body)
        if problem is not None:
            return error(400, "invalid_request_error", problem, headers={"x-should-retry": "false"})
        if self.title is not None and isinstance(request.body, dict) and (
                "You write titles" in json.dumps(request.body.get("system"))):
            return either(text(self.title))
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return error(
            400,
            "invalid_request_error",
            f"fake server: no scripted reply for {request.path}",
            headers={"x-should-retry": "false"},
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (timeout tests do) is expected, not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            request = Recorded(
                method="POST",
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            fake._record(request)
            if self.path not in ("/v1/messages", "/v1/messages/count_tokens"):
                self._send_json(404, error_body("not_found_error", f"no route {self.path}"), {})
                return
            reply = fake._next_reply(request)
            if reply.delay and not wait_unless_dropped(self.connection, reply.delay, fake.drops):
                self.close_connection = True
                return
            headers = {"request-id": f"req_fake_{next(_ids):04d}", **reply.headers}
            streamed = isinstance(body, dict) and body.get("stream") is True
            if reply.events is not None and (reply.json is None or streamed):
                self._send_stream(reply, headers)
            else:
                self._send_json(reply.status, reply.json, headers)

        def _send_json(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _send_stream(self, reply: Reply, headers: dict[str, str]) -> None:
            self.send_response(reply.status)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            for n, (event, data) in enumerate(_events(reply)):
                if n and reply.event_delay and not wait_unless_dropped(
                        self.connection, reply.event_delay, fake.drops):
                    self.close_connection = True
                    return
                if reply.drop_after is not None and n >= reply.drop_after:
                    self.wfile.flush()
                    self.close_connection = True
                    return  # no terminating chunk: the client sees a cut connection
                chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


def _events(reply: Reply) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from reply.events or []
