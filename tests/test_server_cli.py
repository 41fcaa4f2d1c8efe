"""``colloquy users`` and ``colloquy serve`` as an operator types them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from colloquy.store import SQLiteStore
from colloquy.store.users import authenticate, hash_token
from server_helpers import bearer, clean_env, colloquy, serve_subprocess


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "colloquy", *args], capture_output=True,
                          text=True, env=clean_env(), timeout=60)


def test_users_add_list_rotate_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "users.db")
    added = colloquy("users", "add", "ada", "--db", db)
    token = added.stdout.strip()
    assert token.startswith("cq_") and len(token) > 40 and "\n" not in token
    assert "shown only this once" in added.stderr
    assert colloquy("users", "list", "--db", db).stdout.split("\t")[0] == "ada"

    again = run("users", "add", "ada", "--db", db)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    bad = run("users", "add", "no spaces please", "--db", db)
    assert bad.returncode == 2 and "invalid user name" in bad.stderr

    rotated = colloquy("users", "add", "ada", "--rotate", "--db", db).stdout.strip()
    store = SQLiteStore(db)
    try:
        assert authenticate(store, token) is None and authenticate(store, rotated) is not None
        colloquy("users", "revoke", "ada", "--db", db)
        assert authenticate(store, rotated) is None
    finally:
        store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("users.db*"))
    assert rotated.encode() not in raw and token.encode() not in raw
    assert hash_token(rotated).encode() not in raw  # revoked: the hash went too


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    no_key = run("serve", "--model", "claude-sonnet-4-6", "--db", db)
    assert no_key.returncode == 2 and "ANTHROPIC_API_KEY" in no_key.stderr
    assert "Traceback" not in no_key.stderr
    bad_rate = run("serve", "--model", "echo", "--rate-limit", "lots", "--db", db)
    assert bad_rate.returncode == 2 and "invalid rate limit" in bad_rate.stderr
    no_threads = run("serve", "--model", "echo", "--threads", "0", "--db", db)
    assert no_threads.returncode == 2 and "--threads must be at least 1" in no_threads.stderr
    for bad in ("-1", "nan"):
        no_sweep = run("serve", "--model", "echo", "--sweep-interval", bad, "--db", db)
        assert no_sweep.returncode == 2 and "--sweep-interval must not be negative" \
            in no_sweep.stderr


def test_serve_settings_reach_each_worker_s_sweep(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --sweep-interval`` travels to the app each worker builds (app_from_env); its
    effect is tested in tests/test_no_trace.py."""
    from colloquy.server.commands import SETTINGS_VAR, app_from_env

    for given, interval in (({"sweep_interval": 1.5}, 1.5), ({}, 5.0)):  # 5: the default
        monkeypatch.setenv(SETTINGS_VAR, json.dumps(
            {"db": str(tmp_path / "w.db"), "model": "echo", **given}))
        app = app_from_env()
        assert app.state.service.sweeper.interval == interval
        app.state.store.close()


def test_serve_steps_flag_reaches_each_worker(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --steps threads`` travels to the app each worker builds; a bad value is refused
    in one line. Where steps run is tested in tests/test_inline_steps.py."""
    from colloquy.server.commands import SETTINGS_VAR, app_from_env

    for given, inline in (({"steps": "threads"}, False), ({}, True)):  # auto on SQLite: inline
        monkeypatch.setenv(SETTINGS_VAR, json.dumps(
            {"db": str(tmp_path / "w.db"), "model": "echo", **given}))
        app = app_from_env()
        assert app.state.service.inline_steps is inline
        app.state.store.close()
    bad = run("serve", "--model", "echo", "--steps", "loop", "--db", str(tmp_path / "b.db"))
    assert bad.returncode == 2 and "--steps: invalid choice: 'loop'" in bad.stderr


def test_serve_answers_on_loopback_with_a_cli_token(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    token = colloquy("users", "add", "ada", "--db", db).stdout.strip()
    with serve_subprocess(db, "--rate-limit", "5/minute", log=tmp_path / "serve.log") as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "colloquy" in page.text
        codes = [httpx.get(url + "/v1/conversations", headers=bearer(token)).status_code
                 for _ in range(6)]
        assert codes == [200] * 5 + [429]
    log = (tmp_path / "serve.log").read_text()
    assert "http://127.0.0.1:" in log and token not in log


def test_serve_applies_the_guard_flags_to_every_conversation(tmp_path: Path) -> None:
    db = str(tmp_path / "guarded.db")
    bad = run("serve", "--model", "echo", "--guard", "bogus", "--db", db)
    assert bad.returncode == 2 and "unknown guard" in bad.stderr and "Traceback" not in bad.stderr
    token = colloquy("users", "add", "ada", "--db", db).stdout.strip()
    with serve_subprocess(db, "--guard", "topic:cooking,recipes", "--guard", "pii") as url:
        created = httpx.post(url + "/v1/conversations", headers=bearer(token), json={})
        cid = created.json()["id"]
        send = lambda text: httpx.post(  # noqa: E731
            f"{url}/v1/conversations/{cid}/messages", headers=bearer(token),
            json={"content": text}, timeout=30).json()
        off = send("Who will win the football world cup this year?")
        assert off["blocked"] is True and "cooking" in off["text"]
        on = send("Which pancake recipe works for ada@example.com's brunch?")
        assert on["blocked"] is False and "[email]" in on["text"] and "ada@example.com" not in on["text"]
    store = SQLiteStore(db)
    try:
        texts = [sm.message.text for sm in store.load(cid)]
    finally:
        store.close()
    assert not any("ada@example.com" in t for t in texts)  # redacted before it was stored
    assert len(texts) == 4


def _raw_get(url: str, target: str, token: str) -> tuple[int, dict[str, Any]]:
    """A GET written on a socket (HTTP clients refuse URLs this long): status and JSON body."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    head = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n" \
           "Connection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower(), data[:300]
    return int(status_line.split()[1]), json.loads(body)


def test_a_huge_context_query_is_refused_in_json_with_the_size_status(tmp_path: Path) -> None:
    """``GET .../context?message=`` of hundreds of KB: uvicorn's own plain-text
    "400 Invalid HTTP request received." was the answer; now 414 in the service's error shape.
    A message under the URL limit but over --max-message-chars answers 413 (it was previewed:
    200), as sending it does; a request the parser cannot read at all is a JSON 400."""
    db = str(tmp_path / "q.db")
    token = colloquy("users", "add", "ada", "--db", db).stdout.strip()
    with serve_subprocess(db) as url:
        cid = httpx.post(url + "/v1/conversations", headers=bearer(token), json={}).json()["id"]
        base = f"/v1/conversations/{cid}/context?message="
        for target in (base + "a" * 300_000, base + "%C3%A9" * 50_000):
            status, body = _raw_get(url, target, token)
            assert status == 414, body
            assert body["error"]["type"] == "uri_too_long" and "limit" in body["error"]["message"]
        status, body = _raw_get(url, base + "a" * 40_000, token)
        assert status == 413 and body["error"]["type"] == "payload_too_large", body
        assert _raw_get(url, base + "hello", token)[0] == 200
        status, body = _raw_get(url, "/v1/conversations bad target", token)
        assert status == 400 and body["error"]["type"] == "invalid_request", body
