"""Requests made stale by another tab or device, and names no path can carry, on every entry
point and store kind:

* an edit (or a regeneration) names the message it is meant for (``seq``); when another message
  was sent since, it is refused (:class:`EditConflict`, HTTP 409 ``edit_conflict``) and nothing
  is stored, instead of replacing the message sent since;
* an idempotency key stands for one request, operation included: a key first used for a send is
  not answered as a regeneration or an edit (nor the reverse), it is refused (422);
* conversation names ``.`` and ``..`` (which URL parsers remove from a path) and names with
  ``/`` are refused where a name is stored; a name stored before the rule still reads.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from colloquy import (Chat, EchoModel, EditConflict, IdempotencyKeyReused, MemoryStore,
                      SQLiteStore, Store)
from colloquy.errors import ImportRefused, InvalidTextError
from colloquy.rights import export_user, import_user
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import bearer, clean_env, parse_sse


class Site:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.headers = bearer(issue_token(store, "ada"))
        self.client = TestClient(create_app(store=store, model=EchoModel(), environ={},
                                            rate_limit=None))

    def new(self) -> str:
        return str(self.client.post("/v1/conversations", json={}, headers=self.headers).json()["id"])

    def post(self, cid: str, route: str, **body: Any) -> Any:
        return self.client.post(f"/v1/conversations/{cid}/{route}", json=body, headers=self.headers)


def refused(r: Any, status: int, kind: str) -> None:
    """``r`` refused with ``status`` and error type ``kind``: as JSON, or (a stream) before any
    event was sent."""
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind, r.text


# -- F1: an edit names the message it replaces ---------------------------------------------------


def test_the_library_refuses_an_edit_of_a_message_no_longer_the_newest(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="c1")
    first = chat.send("first message")  # seqs 1, 2
    chat.send("second message")  # seqs 3, 4: sent meanwhile from another device
    before = store.load("c1")
    with pytest.raises(EditConflict) as e:
        chat.edit_last("EDITED FIRST", seq=first.seq - 1)
    assert (e.value.seq, e.value.newest) == (1, 3)
    with pytest.raises(EditConflict):  # the reply of an older turn is no target either
        chat.regenerate(seq=first.seq)
    with pytest.raises(EditConflict):  # a user message is no reply, a seq past the end neither
        chat.regenerate(seq=99)
    assert store.load("c1") == before  # nothing stored
    # The newest one, named, is edited; then that edit's own turn is the newest.
    edited = chat.edit_last("EDITED SECOND", seq=3)
    assert "EDITED SECOND" in edited.text
    assert [sm.seq for sm in chat.current_branch()] == [1, 2, 5, 6]
    with pytest.raises(EditConflict):
        chat.edit_last("again", seq=3)  # superseded now
    assert chat.regenerate(seq=edited.seq).seq == edited.seq + 2
    with pytest.raises(ValueError):  # a target without a revision means nothing
        chat.send("x", target=1)


def test_a_target_on_an_empty_conversation_is_a_conflict(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="c0")
    with pytest.raises(EditConflict):
        chat.edit_last("x", seq=1)


@pytest.mark.parametrize("stream", [False, True])
def test_the_route_refuses_a_stale_edit_and_regeneration_with_409(store: Store, stream: bool) -> None:
    site = Site(store)
    cid = site.new()
    assert site.post(cid, "messages", content="first message").status_code == 200
    assert site.post(cid, "messages", content="second message").status_code == 200
    before = site.client.get(f"/v1/conversations/{cid}", headers=site.headers).json()["messages"]
    refused(site.post(cid, "edit", content="EDITED FIRST", seq=1, stream=stream), 409,
            "edit_conflict")
    refused(site.post(cid, "regenerate", seq=2, stream=stream), 409, "edit_conflict")
    r = site.post(cid, "edit", content="EDITED FIRST", seq=1, stream=stream)
    assert "message 1 is no longer the newest turn" in r.json()["error"]["message"]
    after = site.client.get(f"/v1/conversations/{cid}", headers=site.headers).json()["messages"]
    assert after == before
    # The newest, named: edited; a retry of that edit (same key) is replayed, not refused.
    ok = site.post(cid, "edit", content="EDITED SECOND", seq=3, idempotency_key="e-1")
    assert ok.status_code == 200, ok.text
    again = site.post(cid, "edit", content="EDITED SECOND", seq=3, idempotency_key="e-1",
                      stream=stream)
    assert again.status_code == 200, again.text
    if stream:
        assert parse_sse(again)[-1][1]["seq"] == ok.json()["seq"]
    else:
        assert again.json()["seq"] == ok.json()["seq"] and again.headers["Idempotent-Replayed"]
    regen = site.post(cid, "regenerate", seq=ok.json()["seq"])
    assert regen.status_code == 200, regen.text
    assert site.post(cid, "edit", content="x", seq=0).status_code == 422  # seqs start at 1


# -- F5: an idempotency key stands for one operation ---------------------------------------------


def test_a_key_is_not_replayed_across_operations_in_the_library(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="k1")
    chat.send("orig", idempotency_key="K1")
    n = len(store.load("k1"))
    with pytest.raises(IdempotencyKeyReused):
        chat.regenerate(idempotency_key="K1")
    with pytest.raises(IdempotencyKeyReused):
        chat.edit_last("orig", idempotency_key="K1")
    chat.regenerate(idempotency_key="K2")
    with pytest.raises(IdempotencyKeyReused):
        chat.send("orig", idempotency_key="K2")
    with pytest.raises(IdempotencyKeyReused):  # the same operation naming another message
        chat.regenerate(idempotency_key="K2", seq=2)
    assert len(store.load("k1")) == n + 2  # the one regeneration
    assert chat.regenerate(idempotency_key="K2").notes[0].startswith("replayed")
    assert chat.send("orig", idempotency_key="K1").notes[0].startswith("replayed")


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_reused_on_another_turn_route_is_422(store: Store, stream: bool) -> None:
    site = Site(store)
    cid = site.new()
    first = site.post(cid, "messages", content="orig", idempotency_key="K1")
    assert first.status_code == 200
    refused(site.post(cid, "regenerate", idempotency_key="K1", stream=stream), 422,
            "idempotency_key_reused")
    refused(site.post(cid, "edit", content="orig", idempotency_key="K1", stream=stream), 422,
            "idempotency_key_reused")
    assert site.post(cid, "regenerate", idempotency_key="R1").status_code == 200
    refused(site.post(cid, "messages", content="orig", idempotency_key="R1", stream=stream), 422,
            "idempotency_key_reused")
    refused(site.post(cid, "edit", content="orig", idempotency_key="R1", stream=stream), 422,
            "idempotency_key_reused")
    # The header carries the key as the body does.
    r = site.client.post(f"/v1/conversations/{cid}/regenerate", json={"stream": stream},
                         headers={**site.headers, "Idempotency-Key": "K1"})
    refused(r, 422, "idempotency_key_reused")
    messages = site.client.get(f"/v1/conversations/{cid}", headers=site.headers).json()["messages"]
    assert len(messages) == 4  # the first turn and the one regeneration


# -- F4: names a URL path cannot carry --------------------------------------------------------------

BAD_NAMES = [".", "..", "a/b", "/", "../x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_store_refuses_a_name_no_path_can_carry(store: Store, name: str) -> None:
    with pytest.raises(InvalidTextError, match="URL path"):
        store.create_conversation(user_id="ann", name=name)
    with pytest.raises(InvalidTextError):
        store.create_conversation(id=name)  # the id is the name when none is given
    with pytest.raises(InvalidTextError):
        Chat(EchoModel(), store=store, session_id=name).send("hi")
    assert store.list_conversations() == []
    # Dots inside a name, and longer runs of them, are path segments like any other.
    for fine in ("...", ".hidden", "v1.2", "a..b"):
        assert store.create_conversation(user_id="ann", name=fine).name == fine


def test_the_compatible_routes_refuse_such_names_with_422(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "n.db")
    h = bearer(issue_token(store, "ann"))
    client = TestClient(create_app(store=store, model=EchoModel(), environ={}, rate_limit=None))
    msgs = [{"role": "user", "content": "hi"}]
    for name in (".", ".."):
        r = client.post("/v1/chat/completions", headers=h, json={"user": name, "messages": msgs})
        assert r.status_code == 422, r.text
        r = client.post("/v1/chat/completions", headers={**h, "X-Colloquy-Conversation": name},
                        json={"messages": msgs, "stream": True})
        assert r.status_code == 422, r.text
        r = client.post("/v1/messages", headers=h, json={
            "model": "echo", "max_tokens": 10, "messages": msgs, "metadata": {"user_id": name}})
        assert r.status_code in (400, 422), r.text
    assert store.list_conversations() == []
    # A conversation stored under such a name before the rule still reads and continues.
    store.create_conversation(id="c_old", user_id="ann", name="old")
    with sqlite3.connect(tmp_path / "n.db") as db:
        db.execute("UPDATE conversations SET name = '.' WHERE id = 'c_old'")
    r = client.post("/v1/chat/completions", headers=h, json={"user": ".", "messages": msgs})
    assert r.status_code == 200, r.text
    assert [sm.role for sm in store.load("c_old")] == ["user", "assistant"]
    assert export_user(store, "ann")["sessions"][0]["conversation"]["name"] == "."  # as stored


def test_an_import_refuses_such_a_name(tmp_path: Path) -> None:
    sql = SQLiteStore(tmp_path / "a.db")
    memory = MemoryStore()
    for store in (sql, memory):
        Chat(EchoModel(), store=store, session_id="trip", user_id="ann").send("hi")
    for name in ("..", "x/y"):
        bad = export_user(sql, "ann")  # the tables' rows
        table = bad["tables"]["conversations"]
        table["rows"][0][table["columns"].index("name")] = name
        with pytest.raises(ImportRefused, match="URL path"):
            import_user(SQLiteStore(tmp_path / f"b{len(name)}.db"), bad)
        bad = export_user(memory, "ann")  # the sessions
        bad["sessions"][0]["conversation"]["name"] = name
        with pytest.raises(ImportRefused, match="URL path"):
            import_user(MemoryStore(), bad)


def test_the_cli_refuses_such_a_session_name(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    for name in (".", ".."):
        p = subprocess.run([sys.executable, "-m", "colloquy", "chat", "--db", db, "--model", "echo",
                            "--session", name], input="hi\n", capture_output=True, text=True,
                           env=clean_env(), timeout=60)
        assert p.returncode == 2, p.stderr
        assert "URL path" in p.stderr and "Traceback" not in p.stderr
    assert SQLiteStore(db).list_conversations() == []
