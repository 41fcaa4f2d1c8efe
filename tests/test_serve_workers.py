"""``colloquy serve --workers N``: uvicorn's supervisor pings every worker and kills one that
does not answer within its health-check timeout (5 s by default). A worker that stalls for a
few seconds (a loaded machine, a full garbage collection, the embedding model loading) is
healthy: it must not be killed with the turns it holds. Real processes, stalled with SIGSTOP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server_helpers import add_user, bearer, clean_env, serve_process


def _workers(parent: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing's spawned children)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == parent and b"spawn_main" in cmd:
            found.add(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads worker pids from /proc (Linux)")
def test_a_worker_that_stalls_longer_than_uvicorns_5_s_is_not_killed(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    token = add_user(db, "ada")
    log = tmp_path / "serve.log"
    with serve_process(db, "--workers", "2", "--worker-healthcheck-timeout", "40",
                       log=log, startup=90) as (url, proc):
        deadline = time.monotonic() + 60
        while len(workers := _workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, workers
        stalled = min(workers)
        os.kill(stalled, signal.SIGSTOP)
        try:
            time.sleep(8)  # past uvicorn's 5 s: the supervisor killed it at this point
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone: killed by the supervisor
                os.kill(stalled, signal.SIGCONT)
        time.sleep(1)
        assert _workers(proc.pid) == workers  # the same two processes, none restarted
        for _ in range(4):  # and the service answers (whichever worker takes the connection)
            with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
                assert c.post("/v1/conversations", json={}).status_code in (200, 201)
    assert "died" not in log.read_text()


def test_the_health_check_timeout_must_be_positive(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "colloquy", "serve", "--db", str(tmp_path / "x.db"),
                        "--model", "echo", "--worker-healthcheck-timeout", "0"],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert p.returncode != 0 and "--worker-healthcheck-timeout must be positive" in p.stderr
