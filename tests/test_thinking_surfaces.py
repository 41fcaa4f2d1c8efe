"""Extended thinking where people ask for it (issue 14): ``colloquy chat --thinking N`` (thinking
on stderr, dimmed on a terminal, the answer alone on stdout), ``colloquy serve --thinking N``, and
a native request's own ``thinking`` budget, its thinking streamed as SSE events of their own
(``event: thinking``) before the answer's ``delta`` events. The offline echo model stands in for
Claude: with a budget it answers with a thinking block first, as Claude does."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import httpx

from colloquy import EchoModel, SQLiteStore
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import add_user, bearer, clean_env, parse_sse, serve_in_thread, serve_subprocess


def run_chat(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "colloquy", "chat", "--db", "memory",
                           "--model", "echo", *args], input=stdin, capture_output=True,
                          text=True, env=clean_env(), timeout=60)


def test_cli_thinking_goes_to_stderr_and_the_answer_alone_to_stdout() -> None:
    proc = run_chat("--thinking", "2048", stdin="hello\n")
    assert proc.returncode == 0, proc.stderr
    assert "I may think for up to 2048 tokens" in proc.stderr
    assert "think" not in proc.stdout and "last user text: 'hello'" in proc.stdout
    plain = run_chat(stdin="hello\n")
    assert "think" not in plain.stderr


def test_cli_thinking_budget_under_the_api_minimum_is_a_one_line_error() -> None:
    proc = run_chat("--thinking", "100", stdin="hello\n")
    assert proc.returncode == 2
    assert "a thinking budget is at least 1024 tokens" in proc.stderr


def test_a_native_request_asks_for_thinking_and_streams_it_as_its_own_events(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    token = issue_token(store, "ada")
    model = EchoModel()
    app = create_app(store=store, model=model, environ={}, rate_limit=None)
    with serve_in_thread(app) as url:
        auth = bearer(token)
        cid = httpx.post(url + "/v1/conversations", json={}, headers=auth).json()["id"]
        with httpx.stream("POST", f"{url}/v1/conversations/{cid}/messages", headers=auth,
                          json={"content": "hi", "stream": True, "thinking": 4096}) as r:
            events = parse_sse(r)
        kinds = [e for e, _ in events]
        assert kinds[0] == "thinking" and kinds[-1] == "done"
        assert max(i for i, k in enumerate(kinds) if k == "thinking") < kinds.index("delta")
        thought = "".join(d["text"] for e, d in events if e == "thinking")
        assert "up to 4096 tokens" in thought
        done = events[-1][1]
        assert done["content"][0] == {"type": "thinking", "thinking": thought, "signature": "echo"}
        assert model.last_request.thinking == 4096
        # Not streamed: the thinking is in the reply's content blocks; 0 turns it off.
        plain = httpx.post(f"{url}/v1/conversations/{cid}/messages", headers=auth,
                           json={"content": "again", "thinking": 0}).json()
        assert [b["type"] for b in plain["content"]] == ["text"]
        bad = httpx.post(f"{url}/v1/conversations/{cid}/messages", headers=auth,
                         json={"content": "x", "thinking": 10})
        assert bad.status_code == 422 and "at least 1024" in bad.text
    store.close()


def test_serve_thinking_flag_turns_it_on_for_every_turn(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    token = add_user(db, "ada")
    with serve_subprocess(db, "--thinking", "2048") as url:
        auth = bearer(token)
        cid = httpx.post(url + "/v1/conversations", json={}, headers=auth).json()["id"]
        reply = httpx.post(f"{url}/v1/conversations/{cid}/messages", headers=auth,
                           json={"content": "hi"}).json()
        assert reply["content"][0]["type"] == "thinking"
        assert "2048 tokens" in reply["content"][0]["thinking"]
    assert os.path.exists(db)


def test_cli_thinking_is_dimmed_on_a_terminal() -> None:
    """On a terminal (stderr a tty) the thinking is written dimmed (SGR 2), then reset; the
    answer stays alone on stdout."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "colloquy", "chat", "--db", "memory",
                               "--model", "echo", "--thinking", "2048"], input=b"hello\n",
                              stdout=subprocess.PIPE, stderr=slave, env=clean_env(), timeout=60)
        os.close(slave)
        slave = -1
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    dimmed = "".join(re.findall("\x1b\\[2m(.*?)\x1b\\[0m", err.decode(), re.S))
    assert "I may think for up to 2048 tokens" in dimmed  # each piece dimmed as it comes
    assert b"think" not in proc.stdout and b"\x1b[" not in proc.stdout
