"""The HTTP routes for edits, regenerations and what the model saw, on every store kind: JSON and
server-sent events, the conversation's messages marked superseded, the export, and the errors."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from colloquy import EchoModel, Message, Store, export_user, import_user
from colloquy.context.seen import CONTEXT, encode
from colloquy.server import create_app
from colloquy.store import NewMessage
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


def _old_and_new(seqs: list[list[int]], kept: list[list[int]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same context as a record of the first format (``"v": 1``, lists of ranges, stored by
    colloquy before the compact one) and of today's (``"v": 2``, one string per field)."""
    common = {"persona": {"tokens": 4, "sha256": "0" * 16},
              "tokens": {"messages": 30, "tools": 0, "total": 50}}
    old = {"v": 1, "kept": kept, **common,
           "parts": {"recall": {"tokens": 16, "records": [], "seqs": seqs}}}
    new = {"v": 2, "kept": encode(kept), **common, "parts": {"recall": {"tokens": 16, "seqs": encode(seqs)}}}
    return old, new


def test_a_record_stored_in_the_first_format_still_reads_exports_and_imports(store: Store) -> None:
    site = Site(store)
    cid = site.new()
    for text in ("one", "two", "three"):
        site.post(cid, "messages", content=text)
    old, new = _old_and_new(seqs=[[1, 2], [5, 5]], kept=[[3, 4], [6, 7]])
    for rec in (old, new):  # replies as stored by an earlier colloquy, then by this one
        store.append(cid, [NewMessage(message=Message.user("four")),
                           NewMessage(message=Message.assistant("ok"), model="echo",
                                      meta={CONTEXT: rec})])
    assert [m.meta[CONTEXT]["v"] for m in store.load(cid)[-3::2]] == [1, 2]

    def shown(seq: int) -> dict[str, Any]:
        r = site.client.get(f"/v1/conversations/{cid}/messages/{seq}/context", headers=site.headers)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen.pop("seq") == seq
        return dict(seen)

    first, second = shown(8), shown(10)
    assert first == second
    assert [m["seq"] for m in first["messages"]] == [3, 4, 6, 7]
    (recall,) = first["parts"]
    assert recall["seqs"] == [1, 2, 5] == [m["seq"] for m in recall["messages"]]
    assert recall["messages"][0]["text"] == "one" and recall["messages"][2]["text"] == "three"
    exported = json.loads(json.dumps(export_user(store, "ada")))
    (session,) = exported["sessions"]
    assert [m["meta"][CONTEXT] for m in session["messages"] if m["seq"] in (8, 10)] == [old, new]
    import_user(store, exported, replace=True)  # the rows deleted, then restored from the file
    assert shown(8) == first and shown(10) == second
    assert [m.meta[CONTEXT] for m in store.load(cid) if m.seq in (8, 10)] == [old, new]
