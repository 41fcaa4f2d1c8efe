"""Helpers for the service's tests: a real uvicorn server on loopback, in a thread or in a
subprocess, and SSE parsing (httpx-sse). Nothing here replaces colloquy's own code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from httpx_sse import EventSource


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 and a free port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "OPENAI_", "COLLOQUY_"))}
    env.update(extra)
    return env


def colloquy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "colloquy", *args], capture_output=True,
                          text=True, env=env or clean_env(), timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"colloquy {args} exited {proc.returncode}: {proc.stderr}")
    return proc


def add_user(db: str | Path, name: str) -> str:
    """A user created the way an operator does it: ``colloquy users add``."""
    return colloquy("users", "add", name, "--db", str(db)).stdout.strip()


@contextmanager
def serve_subprocess(db: str | Path, *extra: str, log: Path | None = None,
                     env: dict[str, str] | None = None) -> Iterator[str]:
    """``colloquy serve`` as a real process; yields its base URL once /healthz answers."""
    with serve_process(db, *extra, log=log, env=env) as (url, _):
        yield url


@contextmanager
def serve_process(db: str | Path, *extra: str, log: Path | None = None, model: str = "echo",
                  env: dict[str, str] | None = None, startup: float = 30.0,
                  ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As :func:`serve_subprocess`, yielding the process too (to signal it); ``model`` and
    ``env`` as given (default: echo, the environment without provider keys)."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "colloquy", "serve", "--port", str(port), "--db", str(db),
         "--model", model, *extra], stdout=out, stderr=subprocess.STDOUT, env=env or clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"colloquy serve did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def parse_sse(response: httpx.Response) -> list[tuple[str, Any]]:
    """``[(event, data), ...]`` from a text/event-stream response (data parsed as JSON), read
    by httpx-sse as a client of the service would (it checks the content type too)."""
    return [(sse.event, sse.data if sse.data == "[DONE]" else json.loads(sse.data))
            for sse in EventSource(response).iter_sse()]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def texts(events: Sequence[tuple[str, Any]]) -> str:
    return "".join(d["text"] for e, d in events if e == "delta")
