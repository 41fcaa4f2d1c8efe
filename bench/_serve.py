"""The benches' one way to run a server: ``colloquy serve`` (or another server command) in a
subprocess on a free loopback port, ready once ``GET /healthz`` answers 200, stopped with
SIGINT (a clean exit: uvicorn stops its workers, bench/profiled_serve.py writes its profile)
and killed if it has not exited after ``stop_timeout`` seconds.

The server gets the bench's environment without provider keys and ``COLLOQUY_*`` settings, so
a key or a setting in the shell never changes what is measured.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ANTHROPIC_", "OPENAI_", "COLLOQUY_"))}


def serve_command(port: int, db: str, model: str, *flags: str,
                  prefix: Sequence[str] = ()) -> list[str]:
    """``colloquy serve`` on ``port`` over ``db`` with ``model``, no rate limit, warnings only;
    ``prefix``: what runs colloquy's CLI (default ``python -m colloquy``)."""
    return [*(prefix or (sys.executable, "-m", "colloquy")), "serve", "--port", str(port),
            "--db", db, "--model", model, "--rate-limit", "off", "--log-level", "warning", *flags]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:  # refused, reset, or an HTTP error status (urllib's are OSErrors)
        return False


@contextmanager
def running(cmd: Sequence[str], port: int, *, settle: float = 0.0, start_timeout: float = 60,
            stop_timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (a server listening on ``port``) until the block ends. ``settle``: seconds
    to wait after the first healthy answer (e.g. until every worker has opened its store).
    Raises RuntimeError when the server exits or is not healthy within ``start_timeout``."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=bench_env())
    try:
        deadline = time.monotonic() + start_timeout
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {' '.join(cmd)}")
            time.sleep(0.1)
        time.sleep(settle)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
