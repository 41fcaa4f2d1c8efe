"""The HTTP routes for edits, regenerations and what the model saw, on every store kind: JSON and
server-sent events, the conversation's messages marked superseded, the export, and the errors."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from colloquy import EchoModel, Store
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import bearer, parse_sse, texts


class Site:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.model = EchoModel()
        self.headers = bearer(issue_token(store, "ada"))
        self.bob = bearer(issue_token(store, "bob"))
        self.client = TestClient(create_app(store=store, model=self.model, environ={},
                                            rate_limit=None, system="You are terse."))

    def new(self) -> str:
        return str(self.client.post("/v1/conversations", json={}, headers=self.headers).json()["id"])

    def post(self, cid: str, route: str, **body: Any) -> Any:
        return self.client.post(f"/v1/conversations/{cid}/{route}", json=body, headers=self.headers)


def test_edit_and_regenerate_routes(store: Store) -> None:
    site = Site(store)
    cid = site.new()
    # Nothing to revise yet: 409 before any stream starts, and nothing is stored.
    for route, body in (("regenerate", {}), ("edit", {"content": "x"})):
        for stream in (False, True):
            r = site.post(cid, route, stream=stream, **body)
            assert r.status_code == 409, r.text
            assert r.json()["error"]["type"] == "invalid_conversation"
    assert store.load(cid) == []
    assert site.post(cid, "messages", content="my code word is SECRET-A").status_code == 200
    r = site.post(cid, "regenerate")
    assert r.status_code == 200 and r.json()["seq"] == 4
    events = parse_sse(site.post(cid, "edit", content="my code word is REPLACED", stream=True))
    assert [e for e, _ in events][-1] == "done" and "REPLACED" in texts(events)
    assert "SECRET-A" not in json.dumps(site.model.last_request.model_dump(mode="json"))
    detail = site.client.get(f"/v1/conversations/{cid}", headers=site.headers).json()
    marks = [(m["seq"], m["role"], m["superseded_by"], m["revision"], m["has_context"])
             for m in detail["messages"]]
    assert marks == [(1, "user", 3, None, False), (2, "assistant", 3, None, True),
                     (3, "user", 5, "regenerate", False), (4, "assistant", 5, None, True),
                     (5, "user", None, "edit", False), (6, "assistant", None, None, True)]
    # The same key twice is answered once.
    first = site.post(cid, "regenerate", idempotency_key="k-1").json()
    again = site.post(cid, "regenerate", idempotency_key="k-1")
    assert again.json()["seq"] == first["seq"] and again.headers["Idempotent-Replayed"] == "true"
    # Edits are checked like messages.
    assert site.post(cid, "edit", content="   ").status_code in (400, 422)
    assert site.post(cid, "edit", content="x" * 40_000).status_code == 413
    # Another user's conversation does not exist for them.
    r = site.client.post(f"/v1/conversations/{cid}/regenerate", json={}, headers=site.bob)
    assert r.status_code == 404


def test_what_the_model_saw_route(store: Store) -> None:
    site = Site(store)
    cid = site.new()
    site.post(cid, "messages", content="hello")
    site.post(cid, "messages", content="a second question")
    site.post(cid, "regenerate")
    r = site.client.get(f"/v1/conversations/{cid}/messages/6/context", headers=site.headers)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["persona"] == "You are terse." and seen["persona_unchanged"] is True
    assert [m["seq"] for m in seen["messages"]] == [1, 2, 5]  # not the superseded 3 and 4
    assert seen["usage"]["output_tokens"] > 0 and seen["cost"]["total_usd"] == 0.0
    for seq, why in ((1, "no record"), (99, "no record")):
        r = site.client.get(f"/v1/conversations/{cid}/messages/{seq}/context", headers=site.headers)
        assert r.status_code == 404 and why in r.json()["error"]["message"]
    r = site.client.get(f"/v1/conversations/{cid}/messages/6/context", headers=site.bob)
    assert r.status_code == 404 and r.json()["error"]["message"] == f"no conversation with id '{cid}'"


def test_the_export_keeps_superseded_turns_marked(store: Store) -> None:
    site = Site(store)
    cid = site.new()
    site.post(cid, "messages", content="first try")
    site.post(cid, "edit", content="second try")
    exported = site.client.get("/v1/me/export", headers=site.headers).json()
    (session,) = exported["sessions"]
    rows = [(m["seq"], m["message"]["content"][0]["text"], m.get("superseded_by"),
             m["meta"].get("supersedes")) for m in session["messages"]]
    assert rows[0] == (1, "first try", 3, None) and rows[1][2] == 3
    assert rows[2] == (3, "second try", None, [1, 2]) and rows[3][2] is None
