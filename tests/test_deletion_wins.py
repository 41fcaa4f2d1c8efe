"""Deletion wins over work in flight (issue 12, item 2).

A turn's side work (a fact extraction, a summary, a title, the side-call costs in the
conversation's meta, the extraction cursor, the reply itself) runs while its user or
conversation may be deleted by another request. Here a slow model of each kind blocks until the
test has deleted the user (``delete_user``, what ``colloquy users delete`` does, and
``DELETE /v1/me`` through a real HTTP server); afterwards nothing about the user is left: no
row, no export entry, and on SQLite no byte of it in the database file or its ``-wal``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from colloquy import Chat, EchoModel, FunctionModel, ModelResponse, tool_call
from colloquy.context.presets import make_policy
from colloquy.errors import ConversationNotFound
from colloquy.memory.extract import FactExtraction, FactExtractor
from colloquy.models import ModelRequest
from colloquy.rights import delete_user, export_user
from colloquy.server import create_app
from colloquy.store import Store
from colloquy.store.users import issue_token
from conftest import make_store
from server_helpers import bearer, serve_in_thread

SECRET = "RACEUNIQ-5521"
KINDS = ["reply", "facts", "summary", "title"]


@dataclass
class Gate:
    """A model call that, once armed, signals it started and blocks until the test lets go."""

    answer: Any
    armed: bool = False
    entered: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def __call__(self, request: ModelRequest) -> Any:
        if self.armed:
            self.entered.set()
            assert self.go.wait(60), "the test never let the model go"
        return self.answer(request) if callable(self.answer) else self.answer


def extractor_answer(_: ModelRequest) -> ModelResponse:
    return ModelResponse(content=[tool_call("record_memory", {"operations": [
        {"op": "add", "subject": "secret", "statement": f"{SECRET} is the user's secret"}]})],
        stop_reason="tool_use")


def chat_options(kind: str, gate: Gate) -> dict[str, Any]:
    """Chat (and service) settings that make ``kind`` of write go through ``gate``."""
    if kind == "facts":
        return {"extract_facts": FactExtraction(FactExtractor(FunctionModel(gate)), every=1)}
    if kind == "summary":
        return {"policy": make_policy("summary", max_input_tokens=120, config={"summary": {
            "model": FunctionModel(gate, name="slow-summariser"), "min_new_turns": 1}})}
    if kind == "title":
        return {"title_model": FunctionModel(gate, name="slow-titler")}
    return {}


def gate_for(kind: str) -> Gate:
    return Gate({"facts": extractor_answer, "summary": f"- [#1] {SECRET} summary",
                 "title": f"{SECRET} title"}.get(kind, f"{SECRET} reply"))


def nothing_left(store: Store, path: Path | None, cid: str = "c_victim") -> None:
    s: Any = store
    assert store.list_conversations(user_id="victim") == []
    assert store.find_conversation(cid) is None
    assert s.list_facts("victim", include_retired=True) == []
    assert s.list_summaries(cid) == [] and s.get_memory_cursor(cid, "facts") == 0
    assert SECRET not in repr(export_user(store, "victim"))
    if path is not None:
        for suffix in ("", "-wal"):
            f = Path(f"{path}{suffix}")
            if f.exists():
                assert SECRET.encode() not in f.read_bytes(), f"bytes of the secret in {f.name}"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def race_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Path | None]]:
    store = make_store(str(request.param), tmp_path)
    path = tmp_path / "colloquy-test.db" if request.param == "sqlite" else None
    try:
        yield store, path
    finally:
        store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_deleting_the_user_mid_turn_discards_every_write_on_their_behalf(
    race_store: tuple[Store, Path | None], kind: str
) -> None:
    store, path = race_store
    gate = gate_for(kind)
    model: Any = FunctionModel(gate) if kind == "reply" else EchoModel()
    chat = Chat(model, store=store, session_id="c_victim", user_id="victim",
                **chat_options(kind, gate))
    if kind == "summary":  # older turns to summarise, one summary stored before the race
        for i in range(4):
            chat.send(f"earlier message {i} " + "words " * 20)
        assert store.list_summaries("c_victim")  # type: ignore[attr-defined]
    gate.armed = True
    errors: list[BaseException] = []

    def turn() -> None:
        try:
            chat.send(f"my code is {SECRET}")
        except Exception as e:  # noqa: BLE001 - the turn may fail: its user is gone
            errors.append(e)

    t = threading.Thread(target=turn)
    t.start()
    assert gate.entered.wait(60), f"the turn never reached the slow {kind} model"
    delete_user(store, "victim")
    gate.go.set()
    t.join(60)
    assert not t.is_alive()
    nothing_left(store, path)
    if kind in ("reply", "summary"):  # the reply itself could not be stored
        assert len(errors) == 1 and isinstance(errors[0], ConversationNotFound), errors
    # The Chat goes on as a new conversation, with nothing of the deleted one.
    gate.armed = False
    chat.send("a fresh start")
    log = store.load("c_victim")
    assert [sm.message.text for sm in log if sm.role == "user"] == ["a fresh start"]


@pytest.mark.parametrize("kind", ["facts", "summary"])
@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_delete_me_mid_turn_leaves_nothing_of_the_caller(store_kind: str, kind: str,
                                                         tmp_path: Path) -> None:
    store = make_store(store_kind, tmp_path)
    path = tmp_path / "colloquy-test.db" if store_kind == "sqlite" else None
    gate = gate_for(kind)
    token = issue_token(store, "victim")  # type: ignore[arg-type]
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None,
                     **chat_options(kind, gate))
    try:
        with serve_in_thread(app) as url:
            client = httpx.Client(base_url=url, headers=bearer(token), timeout=60)
            cid = client.post("/v1/conversations", json={}).json()["id"]
            if kind == "summary":
                for i in range(4):
                    client.post(f"/v1/conversations/{cid}/messages",
                                json={"content": f"earlier message {i} " + "words " * 20})
                assert store.list_summaries(cid)  # type: ignore[attr-defined]
            gate.armed = True
            answer: list[httpx.Response] = []
            t = threading.Thread(target=lambda: answer.append(client.post(
                f"/v1/conversations/{cid}/messages", json={"content": f"my code is {SECRET}"})))
            t.start()
            assert gate.entered.wait(60), f"the turn never reached the slow {kind} model"
            with httpx.Client(base_url=url, headers=bearer(token), timeout=60) as other:
                assert other.delete("/v1/me").status_code == 200
            gate.go.set()
            t.join(60)
            # Extraction runs after the reply is stored: that turn answers; a summary is made
            # before the model call, so that turn finds its conversation gone.
            assert answer[0].status_code == (200 if kind == "facts" else 404), answer[0].text
            assert client.get("/v1/me").status_code == 401
            client.close()
        nothing_left(store, path, cid)
        assert store.list_users() == []  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_work_in_flight_never_lands_in_a_conversation_created_anew_under_its_id(
    race_store: tuple[Store, Path | None], kind: str
) -> None:
    """The conversation is deleted and created again under the same id (another device, the
    OpenAI route's ids) while the old one's turn is still working: nothing of the old turn
    (reply, facts, summary, title, costs, cursor) lands in the new conversation."""
    store, _ = race_store
    gate = gate_for(kind)
    model: Any = FunctionModel(gate) if kind == "reply" else EchoModel()
    chat = Chat(model, store=store, session_id="c_victim", user_id="victim",
                **chat_options(kind, gate))
    if kind == "summary":
        for i in range(4):
            chat.send(f"earlier message {i} " + "words " * 20)
    gate.armed = True
    errors: list[BaseException] = []

    def turn() -> None:
        try:
            chat.send(f"my code is {SECRET}")
        except Exception as e:  # noqa: BLE001 - checked below
            errors.append(e)

    t = threading.Thread(target=turn)
    t.start()
    assert gate.entered.wait(60)
    store.delete_conversation("c_victim")
    store.create_conversation(id="c_victim", user_id="victim", model="echo")
    gate.go.set()
    t.join(60)
    # The reply could not be stored (its conversation is gone); side work fails quietly.
    assert [type(e).__name__ for e in errors] == (["OwnerGone"] if kind in ("reply", "summary") else [])
    s: Any = store
    fresh = store.get_conversation("c_victim")
    assert store.load("c_victim") == [] and fresh.last_seq == 0
    assert fresh.title is None and fresh.meta == {}
    assert s.list_summaries("c_victim") == [] and s.get_memory_cursor("c_victim", "facts") == 0
    assert s.list_facts("victim", include_retired=True) == []
