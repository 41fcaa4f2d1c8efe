"""``/metrics``: the service's Prometheus series, scraped from real ``colloquy serve`` processes
and parsed with prometheus-client's own parser; access off, token, or a port of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from colloquy import MemoryStore
from colloquy.server import RateLimit, create_app
from colloquy.store.users import issue_token
from server_helpers import add_user, bearer, clean_env, free_port, parse_sse, serve_subprocess


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(found: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in found if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_two_workers_report_the_whole_service(tmp_path: Path) -> None:
    """Ten turns on `colloquy serve --workers 2`; the separate metrics port is served by the
    supervising process, which runs no turn itself: every figure it reports was summed from the
    workers' files."""
    db = tmp_path / "m.db"
    token = add_user(db, "ada")
    mdir = tmp_path / "metrics"
    mport = free_port()
    with serve_subprocess(db, "--workers", "2", "--metrics", f"127.0.0.1:{mport}",
                          "--metrics-dir", str(mdir), "--rate-limit", "off",
                          log=tmp_path / "serve.log") as url:
        replies: list[dict[str, Any]] = []
        for i in range(10):
            # A new connection per turn: the kernel hands them to either worker.
            with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
                cid = c.post("/v1/conversations", json={}).json()["id"]
                r = c.post(f"/v1/conversations/{cid}/messages",
                           json={"content": f"question {i}", "stream": i % 2 == 0})
                assert r.status_code == 200
                replies.append(parse_sse(r)[-1][1] if i % 2 == 0 else r.json())
        r = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        found = samples(r.text)
        writers = {f.name.rsplit("_", 1)[1] for f in mdir.glob("*.db")}
        assert writers and all(pid.removesuffix(".db").isdigit() for pid in writers)
    # The port is not the service's: /metrics there answers 404 (off unless asked for).

    assert total(found, "colloquy_turn_duration_seconds_count") == 10
    assert total(found, "colloquy_turn_duration_seconds_count", outcome="ok", streaming="true") == 5
    assert total(found, "colloquy_turn_time_to_first_token_seconds_count", model="echo") == 5
    assert total(found, "colloquy_model_call_duration_seconds_count", purpose="turn",
                 provider="offline", model="echo") == 10
    assert total(found, "colloquy_turns_in_flight") == 0
    # Token counts add up to what the replies reported, across both workers.
    for kind in ("input", "output"):
        assert total(found, "colloquy_tokens_total", kind=kind, purpose="turn") == sum(
            r["usage"][f"{kind}_tokens"] for r in replies)
    assert total(found, "colloquy_errors_total") == 0
    assert total(found, "colloquy_cost_usd_total") == 0  # echo is free: no dollars, and...
    assert total(found, "colloquy_unpriced_calls_total") == 0  # ...never "unknown"


def test_metrics_behind_a_token(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    token = add_user(db, "ada")
    env = clean_env(COLLOQUY_METRICS_TOKEN="s3cret-metrics")
    with serve_subprocess(db, "--workers", "2", "--metrics", "token", env=env,
                          log=tmp_path / "serve.log") as url:
        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
            cid = c.post("/v1/conversations", json={}).json()["id"]
            for i in range(4):
                assert c.post(f"/v1/conversations/{cid}/messages",
                              json={"content": f"q{i}"}).status_code == 200
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/metrics", headers=bearer(token)).status_code == 401
        # Whichever worker answers, the figures are the service's.
        for _ in range(4):
            with httpx.Client(base_url=url) as fresh:
                r = fresh.get("/metrics", headers=bearer("s3cret-metrics"))
            assert r.status_code == 200
            assert total(samples(r.text), "colloquy_turn_duration_seconds_count") == 4


def test_metrics_are_off_by_default_and_a_metrics_directory_has_one_service(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    add_user(db, "ada")
    mdir = tmp_path / "shared-metrics"
    with serve_subprocess(db, log=tmp_path / "a.log") as url:
        assert httpx.get(url + "/metrics").status_code == 404
    with serve_subprocess(db, "--metrics", str(free_port()), "--metrics-dir", str(mdir),
                          log=tmp_path / "b.log"):
        second = subprocess.run(
            [sys.executable, "-m", "colloquy", "serve", "--db", str(db), "--model", "echo",
             "--port", str(free_port()), "--metrics", str(free_port()), "--metrics-dir", str(mdir)],
            capture_output=True, text=True, env=clean_env(), timeout=60)
        assert second.returncode != 0
        assert "in use by another colloquy serve" in second.stderr
    token_missing = subprocess.run(
        [sys.executable, "-m", "colloquy", "serve", "--db", str(db), "--model", "echo",
         "--metrics", "token"],
        capture_output=True, text=True, env=clean_env(), timeout=60)
    assert token_missing.returncode != 0 and "COLLOQUY_METRICS_TOKEN" in token_missing.stderr


def test_rate_limit_refusals_and_model_errors_are_counted() -> None:
    """In one process (no multiprocess directory): the refusal counted where the limiter
    refuses, and a failing model's calls by error type."""
    from colloquy import RateLimitError, ScriptedModel

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this process records into a multiprocess directory")
    store = MemoryStore()
    model = ScriptedModel(["fine", RateLimitError("slow down", provider="acme", status=429)])
    app = create_app(store, model, rate_limit=RateLimit(requests=3, per=3600),
                     metrics_token="m")
    client = TestClient(app)
    user = bearer(issue_token(store, "ada"))

    def scrape() -> list[Sample]:
        return samples(client.get("/metrics", headers=bearer("m")).text)

    before = scrape()
    cid = client.post("/v1/conversations", json={}, headers=user).json()["id"]
    assert client.post(f"/v1/conversations/{cid}/messages", json={"content": "a"},
                       headers=user).status_code == 200
    assert client.post(f"/v1/conversations/{cid}/messages", json={"content": "b"},
                       headers=user).status_code == 503
    assert client.get("/v1/conversations", headers=user).status_code == 429
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("colloquy_rate_limit_refusals_total") == 1
    assert delta("colloquy_errors_total", source="model_call", type="RateLimitError") == 1
    assert delta("colloquy_errors_total", source="turn", type="RateLimitError") == 1
    assert delta("colloquy_turn_duration_seconds_count", outcome="error") == 1
    assert delta("colloquy_turn_duration_seconds_count", outcome="ok") == 1


@pytest.mark.parametrize("steps,behind,placement", [
    ("auto", False, "loop"), ("auto", True, "behind"), ("threads", False, "threads")])
def test_turns_are_counted_by_where_their_steps_began(steps: str, behind: bool,
                                                      placement: str) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this process records into a multiprocess directory")
    store = MemoryStore()
    app = create_app(store, "echo", rate_limit=None, metrics_token="m", steps=steps)
    if behind:
        app.state.service.lag.watch = lambda: True  # the heartbeat's verdict
    client = TestClient(app)
    user = bearer(issue_token(store, "ada"))

    def count() -> float:
        return total(samples(client.get("/metrics", headers=bearer("m")).text),
                     "colloquy_turn_steps_total", placement=placement)

    before = count()
    cid = client.post("/v1/conversations", json={}, headers=user).json()["id"]
    for text in ("a", "b"):
        assert client.post(f"/v1/conversations/{cid}/messages", json={"content": text},
                           headers=user).status_code == 200
    assert count() - before == 2
