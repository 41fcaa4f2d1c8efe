"""`colloquy serve` exports its traces over OTLP when the standard OTEL_* variables say so: a real
server process, and a loopback OTLP/HTTP receiver that decodes what it is sent with the
OpenTelemetry protobuf definitions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from colloquy.errors import ConfigError
from colloquy.server.otel import exporters_wanted
from server_helpers import add_user, bearer, clean_env, parse_sse, serve_subprocess


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        receiver.spans.extend((resource, s) for s in ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str) -> list[Any]:
        return [s for _, s in self.spans if s.name == name]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


def test_serve_exports_a_turns_trace_over_otlp(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "o.db"
    token = add_user(db, "ada")
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100")
    with serve_subprocess(db, env=env, log=tmp_path / "serve.log") as url:
        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
            cid = c.post("/v1/conversations", json={}).json()["id"]
            r = c.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": True})
            assert parse_sse(r)[-1][0] == "done"
        deadline = time.monotonic() + 30
        while not receiver.named("chat echo") and time.monotonic() < deadline:
            time.sleep(0.1)
    (call,) = receiver.named("chat echo")
    (turn,) = receiver.named("invoke_agent colloquy")
    (server,) = [s for _, s in receiver.spans
                 if s.name == "POST /v1/conversations/{conversation_id}/messages"]
    assert call.parent_span_id == turn.span_id
    assert turn.parent_span_id == server.span_id, "the HTTP request's span parents the turn"
    assert call.trace_id == turn.trace_id == server.trace_id
    a = _attrs(call)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "echo"
    assert a["gen_ai.conversation.id"] == cid and a["colloquy.purpose"] == "turn"
    assert a["gen_ai.usage.output_tokens"] > 0
    assert {res.get("service.name") for res, _ in receiver.spans} == {"colloquy"}
    assert not receiver.named("GET /healthz"), "health checks are not traced"


def test_no_export_unless_the_variables_ask() -> None:
    assert exporters_wanted({}) == []
    assert exporters_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert exporters_wanted({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert exporters_wanted({"OTEL_TRACES_EXPORTER": "none",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == []
    assert exporters_wanted({"OTEL_SDK_DISABLED": "true",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == []
    with pytest.raises(ConfigError, match="zipkin"):
        exporters_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        exporters_wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        exporters_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                          "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
