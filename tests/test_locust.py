"""The Locust file (bench/locustfile.py) drives a real ``colloquy serve`` on loopback: Locust
runs in-process in a child (it monkey-patches with gevent, so never in the test process itself),
bounded in time, and reports its own percentiles with no failure, JSON and streamed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server_helpers import add_user, clean_env, serve_subprocess

LOCUSTFILE = Path(__file__).parent.parent / "bench" / "locustfile.py"


@pytest.mark.parametrize("stream", [False, True])
def test_locust_scenario_runs_against_colloquy_serve(tmp_path: Path, stream: bool) -> None:
    db = tmp_path / "c.db"
    token = add_user(db, "locust")
    with serve_subprocess(db, "--model", "echo?latency=0.05&delay=0.001&words=20",
                          "--rate-limit", "off") as url:
        proc = subprocess.run(
            [sys.executable, str(LOCUSTFILE), "--host", url, "--users", "5", "--seconds", "90",
             "--min-turns", "15",
             *(["--stream"] if stream else [])],
            capture_output=True, text=True, timeout=180, env=clean_env(COLLOQUY_TOKEN=token))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    turn = report["entries"]["streamed turn" if stream else "turn"]
    assert turn["requests"] >= 15 and turn["failures"] == 0, report
    assert report["entries"]["create conversation"]["requests"] == 5
    # At least the model's 50 ms (a stream's headers come at once: its first token waits).
    timed = report["entries"]["first token"] if stream else turn
    assert timed["requests"] >= 5 and 50 <= timed["p50_ms"] <= timed["p99_ms"]
    assert not report["errors"]
