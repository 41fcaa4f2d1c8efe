"""The yardstick for bench/stream.py and bench/load.py: a bare FastAPI app under uvicorn that
answers colloquy's turn routes the way a server with no conversation state would, so a run can
put ``colloquy serve``'s cost beside the framework's own.

    python bench/baseline_app.py --port P [--latency S] [--delay S] [--words N]

``POST /v1/conversations`` returns a fresh id; ``POST /v1/conversations/{id}/messages`` waits
``latency`` seconds, then answers JSON, or with ``"stream": true`` relays ``words`` SSE
``delta`` events ``delay`` seconds apart (what the echo model with the same options sends) and a
``done`` event. No store, no auth lookup, no policy: the framework and the wire only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class Body(BaseModel):
    content: str
    stream: bool = False


def make_app(latency: float, delay: float, words: int) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/me")
    def me() -> dict[str, str]:
        return {"user_id": "bench"}

    @app.post("/v1/conversations", status_code=201)
    def create() -> dict[str, str]:
        return {"id": uuid.uuid4().hex}

    @app.post("/v1/conversations/{cid}/messages")
    async def send(cid: str, body: Body) -> Any:
        if not body.stream:
            await asyncio.sleep(latency)
            text = " ".join(["word"] * max(words, 1))
            return {"text": text, "conversation_id": cid, "usage": {"output_tokens": words}}

        async def events() -> AsyncIterator[str]:
            await asyncio.sleep(latency)
            for _ in range(words):
                yield f"event: delta\ndata: {json.dumps({'text': 'word '})}\n\n"
                await asyncio.sleep(delay)
            yield f"event: done\ndata: {json.dumps({'usage': {'output_tokens': words}})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--words", type=int, default=10)
    args = ap.parse_args()
    uvicorn.run(make_app(args.latency, args.delay, args.words), host="127.0.0.1", port=args.port,
                log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
