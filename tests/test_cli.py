"""The ``colloquy`` command, run as real subprocesses: what a user types is what is tested."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from colloquy.store import SQLiteStore


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "COLLOQUY_"))}
    base.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "colloquy", *args], input=stdin, capture_output=True, text=True,
        env=base, timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "chat.db")


def test_scripted_chat_persists_and_resumes_in_a_second_process(db: str) -> None:
    first = run("chat", "--model", "echo", "--session", "s1", "--system", "You are terse.",
                "--db", db, stdin="my name is Ada\nI like tea\n")
    assert "last user text: 'my name is Ada'" in first.stdout
    assert "last user text: 'I like tea'" in first.stdout
    assert "session s1" in first.stderr

    second = run("chat", "--session", "s1", "--db", db, stdin="what is my name?\n")
    assert "resuming session s1 (4 messages, model echo)" in second.stderr
    # The echo model saw the whole history: 5 messages.
    assert "received 5 messages" in second.stdout

    ctx = json.loads(run("context", "s1", "--json", "--db", db).stdout)
    assert ctx["model"] == "echo"
    assert ctx["system"] == [{"type": "text", "text": "You are terse."}]
    texts = [b["text"] for m in ctx["messages"] for b in m["content"] if m["role"] == "user"]
    assert texts == ["my name is Ada", "I like tea", "what is my name?"]
    assert all(m["role"] in ("user", "assistant") for m in ctx["messages"])


def test_context_window_and_budget_flags(db: str) -> None:
    run("chat", "--model", "echo", "--session", "w", "--db", db, stdin="one\ntwo\nthree\n")
    ctx = json.loads(run("context", "w", "--window", "1", "--json", "--db", db).stdout)
    assert [m["role"] for m in ctx["messages"]] == ["user", "assistant"]
    assert ctx["messages"][0]["content"][0]["text"] == "three"
    ctx = json.loads(run("context", "w", "--window", "2", "--message", "four", "--json", "--db", db).stdout)
    assert [b["text"] for m in ctx["messages"] if m["role"] == "user" for b in m["content"]] == ["three", "four"]
    tight = json.loads(run("context", "w", "--max-input-tokens", "60", "--json", "--db", db).stdout)
    assert 1 <= len(tight["messages"]) < 6
    assert tight["messages"][0]["role"] == "user"


def test_slash_commands(db: str) -> None:
    out = run("chat", "--model", "echo", "--session", "sl", "--db", db,
              stdin="hello\n/history\n/cost\n/context\n/quit\nnever sent\n").stdout
    assert "[1] user: hello" in out
    assert "[2] assistant: echo:" in out
    assert "session: 1 calls" in out and "$0.000000" in out
    assert '"messages"' in out
    assert "never sent" not in out


def test_missing_api_key_is_one_clear_line(db: str) -> None:
    proc = run("chat", "--db", db, stdin="hi\n", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ANTHROPIC_API_KEY" in lines[0] and "--model echo" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["sessions", "show", "nope"], ["sessions", "export", "nope"], ["sessions", "delete", "nope"],
     ["context", "nope"]],
)
def test_unknown_session_is_a_clear_error(db: str, args: list[str]) -> None:
    SQLiteStore(db).close()
    proc = run(*args, "--db", db, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "colloquy: error: no conversation with id 'nope'"


def test_bad_flags_are_clear_errors(db: str) -> None:
    proc = run("chat", "--model", "echo", "--window", "0", "--db", db, check=False)
    assert proc.returncode == 2 and "--window must be at least 1" in proc.stderr
    proc = run("chat", "--window", "3", "--max-input-tokens", "100", "--db", db, check=False)
    assert proc.returncode == 2 and "need a --policy that uses both" in proc.stderr
    proc = run("chat", "--model", "nonsense-model", "--db", db, check=False)
    assert proc.returncode == 2 and "unknown model 'nonsense-model'" in proc.stderr
    proc = run("chat", "--model", "echo", "--temperature", "9", "--db", db, check=False)
    assert proc.returncode == 2 and "--temperature" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sessions_list_show_export_delete(db: str, tmp_path: Path) -> None:
    run("chat", "--model", "echo", "--session", "a", "--user", "u1", "--db", db, stdin="first\n")
    run("chat", "--model", "echo", "--session", "b", "--user", "u2", "--db", db, stdin="second\n")
    listing = run("sessions", "list", "--db", db).stdout.splitlines()
    assert [line.split("\t")[0] for line in listing] == ["b", "a"]  # newest first
    only_u1 = json.loads(run("sessions", "list", "--user", "u1", "--json", "--db", db).stdout)
    assert [c["id"] for c in only_u1] == ["a"]

    shown = json.loads(run("sessions", "show", "a", "--json", "--db", db).stdout)
    assert shown["conversation"]["user_id"] == "u1"
    assert [m["seq"] for m in shown["messages"]] == [1, 2]
    assert shown["messages"][1]["usage"]["output_tokens"] > 0

    out = tmp_path / "a.json"
    run("sessions", "export", "a", "-o", str(out), "--db", db)
    assert json.loads(out.read_text())["messages"][0]["message"]["content"][0]["text"] == "first"

    run("sessions", "delete", "a", "--db", db)
    assert [line.split("\t")[0] for line in run("sessions", "list", "--db", db).stdout.splitlines()] == ["b"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_model_call_keeps_the_message(db: str) -> None:
    env = {"OLLAMA_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1"}
    proc = run("chat", "--model", "ollama:llama3", "--session", "f", "--db", db,
               stdin="please remember this\n", env=env, check=False)
    assert proc.returncode == 1
    assert "model error" in proc.stderr and "your message is saved" in proc.stderr
    assert "Traceback" not in proc.stderr
    shown = json.loads(run("sessions", "show", "f", "--json", "--db", db).stdout)
    assert [m["message"]["role"] for m in shown["messages"]] == ["user"]
    # The conversation stays usable: the next turn (offline) sends a valid request.
    again = run("chat", "--model", "echo", "--session", "f", "--db", db, stdin="hello again\n")
    assert "received 1 message" in again.stdout  # the two user messages were merged
    ctx = json.loads(run("context", "f", "--json", "--db", db).stdout)
    assert ctx["messages"][0]["role"] == "user"
    assert [b["text"] for b in ctx["messages"][0]["content"]] == ["please remember this", "hello again"]


def test_default_database_lives_in_the_user_data_dir(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    run("chat", "--model", "echo", "--session", "d", stdin="hi\n", env=env)
    assert (tmp_path / "data" / "colloquy" / "colloquy.db").exists()
    env["COLLOQUY_DB"] = str(tmp_path / "elsewhere.db")
    run("chat", "--model", "echo", "--session", "d", stdin="hi\n", env=env)
    assert (tmp_path / "elsewhere.db").exists()
