"""A small, real OpenAI-compatible HTTP server on loopback, for testing the OpenAI adapter.

It speaks the wire protocol (JSON ``chat.completion``, SSE ``chat.completion.chunk`` lines
ending in ``data: [DONE]``, OpenAI's JSON error shape), so the official SDK runs unmodified
against it: retries, headers, streaming and error parsing are all exercised for real.

Script it with a queue of replies; each reply is rendered as JSON or as a stream according to
the request, as OpenAI does. Every request is recorded (path, headers, JSON body). Bodies that
break OpenAI's rules for tool calls get OpenAI's 400 (:func:`request_problem`).

Real OpenAI-compatible servers differ from OpenAI in ways colloquy must survive; the fake
models the ones seen with llama.cpp's server (llama-cpp-python), each an option of the server:
``stream_usage=False`` (streams carry no usage chunk even when asked), ``ignore_tools=True``
(``tools`` are ignored: a scripted tool call comes back as its arguments in text, as a small
model without a tool-calling template writes it), ``tool_call_ids="functions"`` (every tool
call's id is ``functions.NAME:INDEX``, the same every turn); and :class:`EmptyStream`, the 200
with no content that llama.cpp streams when the prompt overflows its context.

    with FakeOpenAI() as server:
        server.push(Turn(text="hello"))
        model = OpenAIModel("gpt-4o", api_key="sk-test", base_url=server.base_url)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_wire import Drops, wait_unless_dropped


@dataclass
class ToolCall:
    """A tool call the fake model makes; ``pieces`` splits its arguments across SSE chunks."""

    id: str
    name: str
    arguments: str
    pieces: list[str] | None = None

    def argument_pieces(self) -> list[str]:
        if self.pieces is not None:
            assert "".join(self.pieces) == self.arguments, "pieces must join to the arguments"
            return self.pieces
        return [self.arguments]


@dataclass
class Turn:
    """One successful answer. ``pieces`` splits the text across SSE chunks when streamed."""

    text: str | None = None
    pieces: list[str] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int | None = None
    include_usage: bool = True
    model: str | None = None
    refusal: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds before answering, and between streamed chunks; a client that hangs up
    #: meanwhile is noticed at once (FakeOpenAI.drops).
    delay: float = 0.0
    piece_delay: float = 0.0

    def finish(self) -> str:
        if self.finish_reason:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def usage(self) -> dict[str, Any] | None:
        if not self.include_usage:
            return None
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


@dataclass
class ErrorReply:
    """An HTTP error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str = "error"
    type: str = "invalid_request_error"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamError:
    """A stream that starts normally then sends an error event, as OpenAI does mid-stream."""

    before: list[str]
    message: str = "The server had an error while processing your request."
    type: str = "server_error"
    code: str | None = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class EmptyStream:
    """A completion with no content at all: a streamed 200 whose chunks carry no text, no tool
    call and no finish_reason (or, non-streamed, an empty message), as llama.cpp's server
    answers when the prompt overflows its context while streaming."""

    finish_reason: str | None = None


Reply = Turn | ErrorReply | StreamError | EmptyStream


def request_problem(body: Any) -> tuple[str, str | None, str | None] | None:
    """The first of OpenAI's chat-completions rules for tool calls that ``body`` breaks, as
    (message, param, code) worded as OpenAI's 400 says it, or None.

    Rules: ``tool_choice`` and ``parallel_tool_calls`` only with ``tools`` (a named function
    among them); a ``tool_calls[].id`` is at most 40 characters; an assistant message with
    ``tool_calls`` is followed by one ``tool`` message per call; a ``tool`` message answers a
    call of the assistant message before it; only user messages hold ``image_url`` parts."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return ("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    for field in ("tool_choice", "parallel_tool_calls"):
        if field in body and not body.get("tools"):
            return (f"Invalid value for '{field}': '{field}' is only allowed when 'tools' are "
                    "specified.", field, None)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("function", {}).get("name") not in {
            t["function"]["name"] for t in body["tools"]}:
        return ("Invalid value for 'tool_choice': the named function is not among 'tools'.",
                "tool_choice", None)
    messages = body["messages"]
    open_calls: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        parts = m.get("content") if isinstance(m.get("content"), list) else []
        if role != "user" and any(p.get("type") == "image_url" for p in parts):
            return (f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with role "
                    f"'user', but this message with role '{role}' contains an image URL.",
                    f"messages[{i}]", "invalid_value")
        if role == "tool":
            if m.get("tool_call_id") not in open_calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.", f"messages.[{i}].role", None)
            open_calls.remove(m["tool_call_id"])
            continue
        if open_calls:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                    f"response messages: {', '.join(open_calls)}", f"messages.[{i}].role", None)
        for k, call in enumerate(m.get("tool_calls") or []):
            call_id = str(call.get("id", ""))
            if len(call_id) > 40:
                return (f"Invalid 'messages[{i}].tool_calls[{k}].id': string too long. Expected "
                        f"a string with maximum length 40, but got a string with length "
                        f"{len(call_id)} instead.", f"messages[{i}].tool_calls[{k}].id",
                        "string_above_max_length")
            open_calls.append(call_id)
    if open_calls:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_calls)}", "messages", None)
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timeout test) is expected; anything else is printed."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class FakeOpenAI:
    """The server. Use as a context manager; ``base_url`` ends in ``/v1`` like OpenAI's."""

    def __init__(self, *, strict: bool = True, stream_usage: bool = True,
                 ignore_tools: bool = False, tool_call_ids: str | None = None) -> None:
        self.strict = strict
        self.stream_usage = stream_usage
        self.ignore_tools = ignore_tools
        self.tool_call_ids = tool_call_ids
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        #: Answers whose client hung up before they were complete.
        self.drops = Drops()
        self._lock = threading.Lock()
        self._counter = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self)

        self._server = _Server(("127.0.0.1", 0), Handler)
        # A short poll interval keeps shutdown (once per test) from costing half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    # -- scripting --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *replies: Reply) -> FakeOpenAI:
        with self._lock:
            self.replies.extend(replies)
        return self

    @property
    def last(self) -> Recorded:
        assert self.requests, "the fake server received no request"
        return self.requests[-1]

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- serving ----------------------------------------------------------------------------

    def _next_id(self) -> str:
        with self._lock:
            self._counter += 1
            return f"req_{self._counter:04d}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(
                Recorded(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, body)
            )
            reply = self.replies.popleft() if self.replies else None
        request_id = self._next_id()
        if h.command != "POST" or h.path.split("?")[0] != "/v1/chat/completions":
            self._send_json(h, 404, _error_body(f"Unknown path {h.path}", "invalid_request_error",
                                                "unknown_url"), request_id)
            return
        if reply is None:
            # 418 is neither retried by the SDK nor mistaken for a mapped error.
            self._send_json(h, 418, _error_body("fake server: no scripted reply", "test_error",
                                                None), request_id)
            return
        if isinstance(reply, ErrorReply):
            self._send_json(h, reply.status, _error_body(reply.message, reply.type, reply.code),
                            request_id, reply.headers)
            return
        assert isinstance(body, dict)
        problem = request_problem(body) if self.strict else None
        if problem is not None:
            message, param, code = problem
            error = _error_body(message, "invalid_request_error", code)
            error["error"]["param"] = param
            self._send_json(h, 400, error, request_id)
            return
        model = body.get("model", "fake")
        if isinstance(reply, EmptyStream):
            if body.get("stream"):
                self._send_sse(h, [_chunk(request_id, model, {}, reply.finish_reason)],
                               request_id, {})
            else:
                self._send_json(h, 200, _completion(Turn(text=None, finish_reason=(
                    reply.finish_reason or "stop"), include_usage=False), request_id, model),
                    request_id)
            return
        if isinstance(reply, StreamError):
            chunks = [_chunk(request_id, model, {"content": p}, None) for p in reply.before]
            chunks.append(_error_body(reply.message, reply.type, reply.code))
            self._send_sse(h, chunks, request_id, {})
            return
        reply = self._quirks(reply)
        if reply.delay and not wait_unless_dropped(h.connection, reply.delay, self.drops):
            h.close_connection = True
            return
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            include_usage = include_usage and self.stream_usage
            self._send_sse(h, _stream_chunks(reply, request_id, model, include_usage),
                           request_id, reply.headers, reply.piece_delay, self.drops)
        else:
            self._send_json(h, 200, _completion(reply, request_id, model), request_id,
                            reply.headers)

    def _quirks(self, turn: Turn) -> Turn:
        """The scripted turn as this server would really send it (see the module docstring)."""
        calls = turn.tool_calls
        if self.tool_call_ids == "functions":
            calls = [ToolCall(id=f"functions.{c.name}:{k}", name=c.name, arguments=c.arguments,
                              pieces=c.pieces) for k, c in enumerate(calls)]
        if self.ignore_tools and calls:
            written = "\n".join(json.dumps({"name": c.name, "arguments": json.loads(c.arguments)})
                                 for c in calls)
            text = f"{turn.text}\n{written}" if turn.text else written
            return replace(turn, text=text, pieces=None, tool_calls=[], finish_reason="stop")
        return replace(turn, tool_calls=calls) if calls is not turn.tool_calls else turn

    @staticmethod
    def _send_json(h: BaseHTTPRequestHandler, status: int, payload: Any, request_id: str,
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.send_header("x-request-id", request_id)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _send_sse(h: BaseHTTPRequestHandler, chunks: list[Any], request_id: str,
                  headers: dict[str, str], piece_delay: float = 0.0,
                  drops: Drops | None = None) -> None:
        # HTTP/1.0 without content-length: the body ends when the connection closes.
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("x-request-id", request_id)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        for n, chunk in enumerate(chunks):
            if n and piece_delay and drops is not None and not wait_unless_dropped(
                    h.connection, piece_delay, drops):
                h.close_connection = True
                return
            h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            h.wfile.flush()
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _completion(turn: Turn, request_id: str, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": turn.refusal}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": turn.model or model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": turn.finish()}],
        "usage": turn.usage(),
    }


def _chunk(request_id: str, model: str, delta: dict[str, Any], finish: str | None,
           usage_field: bool = False) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage_field:
        chunk["usage"] = None
    return chunk


def _stream_chunks(turn: Turn, request_id: str, model: str,
                   include_usage: bool) -> list[dict[str, Any]]:
    """The chunks OpenAI sends: a role chunk, content pieces, tool-call pieces (id, type and
    name only in each call's first chunk), a finish chunk, then a usage-only chunk with no
    choices when the client asked for it."""
    model = turn.model or model

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return _chunk(request_id, model, delta, finish, usage_field=include_usage)

    out = [chunk({"role": "assistant", "content": ""})]
    pieces = turn.pieces if turn.pieces is not None else ([turn.text] if turn.text else [])
    if turn.pieces is not None:
        assert "".join(turn.pieces) == (turn.text or ""), "pieces must join to the text"
    out += [chunk({"content": p}) for p in pieces]
    if turn.refusal:
        out.append(chunk({"refusal": turn.refusal}))
    for index, call in enumerate(turn.tool_calls):
        out.append(chunk({"tool_calls": [{
            "index": index, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }]}))
        out += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
            for p in call.argument_pieces()
        ]
    out.append(chunk({}, turn.finish()))
    usage = turn.usage()
    if include_usage and usage is not None:
        out.append({
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [],
            "usage": usage,
        })
    return out
