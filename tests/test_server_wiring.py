"""Wiring that must hold at run time: ``colloquy serve``'s logging (access lines written, secrets
redacted, never a "--- Logging error ---"), and ``create_app``'s policy argument (a policy name
works as the CLI's --policy does; anything else is refused when the app is built)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from colloquy import EchoModel, RollingWindow, SQLiteStore
from colloquy.context.compose import ComposedPolicy
from colloquy.errors import ConfigError
from colloquy.server import create_app
from colloquy.server.errors import RedactingFilter, Redactor
from colloquy.store.users import issue_token
from server_helpers import add_user, bearer, clean_env, serve_subprocess

SECRET = "sk-ant-test-0123456789abcdef"


def serve_and_log(db: Path, level: str, token: str) -> str:
    """Run ``colloquy serve --log-level LEVEL`` as a real process, make a few requests (one
    naming the secret in its path), stop it, and return everything it printed."""
    log = db.with_suffix(f".{level}.log")
    env = clean_env(ANTHROPIC_API_KEY=SECRET)  # a secret the redactor knows
    with serve_subprocess(db, "--log-level", level, log=log, env=env) as url:
        assert httpx.get(url + "/v1/conversations", headers=bearer(token)).status_code == 200
        assert httpx.get(url + "/v1/conversations", headers=bearer("nope")).status_code == 401
        assert httpx.get(url + f"/v1/conversations/{SECRET}", headers=bearer(token)).status_code == 404
        time.sleep(0.3)
    return log.read_text()


@pytest.mark.parametrize("level", ["debug", "info", "warning"])
def test_serve_logs_every_request_and_never_breaks_logging(tmp_path: Path, level: str) -> None:
    db = tmp_path / "s.db"
    token = add_user(db, "ada")
    text = serve_and_log(db, level, token)
    assert "Logging error" not in text and "Traceback" not in text, text[-2000:]
    assert SECRET not in text
    if level in ("debug", "info"):  # uvicorn writes access lines at info
        assert '"GET /healthz HTTP/1.1" 200' in text
        assert '"GET /v1/conversations HTTP/1.1" 401' in text
        assert '"GET /v1/conversations/[redacted] HTTP/1.1" 404' in text


def test_the_filter_keeps_records_formattable_and_never_raises() -> None:
    from uvicorn.logging import AccessFormatter

    f = RedactingFilter(Redactor([SECRET]))
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/x/{SECRET}", "1.1", 200), None)
    assert f.filter(access)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(access)
    assert line == '127.0.0.1:5 - "GET /x/[redacted] HTTP/1.1" 200 OK'
    mapping = logging.LogRecord("x", logging.INFO, __file__, 1, "key %(k)s", None, None)
    mapping.args = {"k": SECRET}
    assert f.filter(mapping) and mapping.getMessage() == "key [redacted]"
    hidden = logging.LogRecord("x", logging.WARNING, __file__, 1, "failed: %s",
                               (ValueError(f"bad key {SECRET}"),), None)
    assert f.filter(hidden) and hidden.getMessage() == "failed: bad key [redacted]"
    broken = logging.LogRecord("x", logging.INFO, __file__, 1, "%d apples", ("many",), None)
    assert f.filter(broken)  # a record that cannot format passes untouched, the filter survives
    try:
        raise RuntimeError(f"leak {SECRET}")
    except RuntimeError:
        with_exc = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert f.filter(with_exc) and with_exc.exc_info is None and SECRET not in with_exc.getMessage()


# -- create_app(policy=...) ---------------------------------------------------------------------------


def test_create_app_takes_a_policy_name_as_the_cli_does(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    token = issue_token(store, "ada")
    app = create_app(store=store, model="echo", environ={}, policy="facts", rate_limit=None)
    service = app.state.service
    assert isinstance(service.policy, ComposedPolicy)
    assert service.settings.extract_facts is not None  # like --policy facts: facts are learnt
    client = TestClient(app)
    cid = client.post("/v1/conversations", json={}, headers=bearer(token)).json()["id"]
    r = client.post(f"/v1/conversations/{cid}/messages", json={"content": "I live in Lisbon."},
                    headers=bearer(token))
    assert r.status_code == 200, r.text
    kept = create_app(store=store, model="echo", environ={}, policy=RollingWindow(turns=3))
    assert isinstance(kept.state.service.policy, RollingWindow)


@pytest.mark.parametrize("bad", ["fact", "", 5, {"policy": "facts"}, EchoModel()])
def test_create_app_refuses_what_is_not_a_policy_when_it_is_built(tmp_path: Path, bad: object) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    with pytest.raises(ConfigError, match=r"ContextPolicy .*window, budget, full, summary, facts"):
        create_app(store=store, model="echo", environ={}, policy=bad)
