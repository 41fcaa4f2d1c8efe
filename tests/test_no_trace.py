"""A deleted user leaves no trace: not in any table, and not in the process that served them.

Each test has two users do everything the library and the service let them write (named
conversations, turns with idempotency keys, the OpenAI-compatible route, facts, a summary, a
cursor, rate-limit state, an account), deletes one, then searches for that user's name and
conversation ids in every row of every table (SQL stores) and in every object the store and the
service hold in memory (any store, the memory store's being its whole state). The other user's
data is still found, so the search itself is shown to work.

A user deleted by *another* process (``colloquy users delete`` here) leaves the serving
process's memory within the sweep interval (colloquy.server.sweep), for SQLite and PostgreSQL.
"""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys
import time
import weakref
from typing import Any

from fastapi.testclient import TestClient

from colloquy import Chat, EchoModel, Store
from colloquy.rights import delete_user, discover_tables
from colloquy.server import create_app
from colloquy.server.ratelimit import RateLimit
from colloquy.store import open_store
from colloquy.store.users import issue_token
from server_helpers import bearer, clean_env
from test_data_rights import populate
from test_server_multiprocess import db  # noqa: F401  (the fixture: SQLite, PostgreSQL)

ANN, BOB = "zqann", "zqbob"  # names no other string contains


def rows_text(store: Store) -> str:
    """Every row of every table (SQL stores); '' for the memory store."""
    if not hasattr(store, "transaction"):
        return ""
    out, tables = [], discover_tables(store)
    with store.transaction(write=False) as conn:  # type: ignore[attr-defined]
        for table in tables:
            out.extend(repr(r) for r in conn.execute(f'SELECT * FROM "{table}"').fetchall())
    return "\n".join(out)


def held_text(*roots: Any) -> str:
    """Every string reachable from ``roots`` through containers and colloquy's own objects
    (their attributes, pydantic fields, dataclass fields): what the process holds, the offline
    model's record of requests included. Each line is ``path = string``, so a failure names
    where the string is held."""
    seen: set[int] = set()
    found: list[str] = []
    todo: list[tuple[Any, str]] = [(r, type(r).__name__) for r in roots]
    while todo:
        obj, path = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (str, bytes)):
            text = obj if isinstance(obj, str) else obj.decode("utf-8", "replace")
            found.append(f"{path} = {text!r}")
        elif isinstance(obj, dict):
            todo.extend((k, f"{path} key") for k in list(obj))
            todo.extend((v, f"{path}[{k!r}]") for k, v in list(obj.items()))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(list(obj)))
        elif type(obj).__module__.startswith("colloquy"):
            attrs = dict(getattr(obj, "__dict__", {}))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    attrs[slot] = getattr(obj, slot)
            attrs["__pydantic_extra__"] = getattr(obj, "__pydantic_extra__", None)
            todo.extend((v, f"{path}.{k}") for k, v in attrs.items() if v is not None)
    return "\n".join(found)


def library_writes(store: Store, user: str, model: EchoModel) -> list[str]:
    """What a library user writes (test_data_rights.populate: conversations, a summary, a
    cursor, a fact, an account), and a named conversation, a turn with an idempotency key and
    rate-limit state. Returns the conversation ids."""
    ids = populate(store, user, f"marker-{user}")
    named = store.create_conversation(user_id=user, name=f"trip-{user}")
    Chat(model, store=store, session_id=named.id, user_id=user).send(
        f"named by {user}", idempotency_key=f"key-{user}")
    store.take_rate(user, 60.0, 5)  # type: ignore[attr-defined]
    return [*ids, named.id]


def assert_gone(text: str, user: str, ids: list[str], where: str) -> None:
    for needle in (user, *ids):
        held = [line for line in text.splitlines() if needle in line]
        assert not held, f"{needle!r} is still in {where}: {held[:5]}"


def test_delete_user_leaves_no_trace_in_the_database_or_the_store_object(store: Store) -> None:
    model = EchoModel()  # one model object for both users, as in a server
    ann = library_writes(store, ANN, model)
    bob = library_writes(store, BOB, model)
    assert ANN in held_text(model)  # the model's record of requests holds what it was sent
    delete_user(store, ANN)
    assert_gone(rows_text(store), ANN, ann, "the database")
    assert_gone(held_text(store, model), ANN, ann, "the store and model objects")
    assert BOB in held_text(store) + rows_text(store)  # the search finds what is there
    assert BOB in held_text(model)  # only the deleted user's requests were dropped
    # The same name starts afresh: a new account's rate limit owes nothing to the old one.
    assert store.take_rate(ANN, 60.0, 1) == 0.0  # type: ignore[attr-defined]


def test_delete_me_leaves_no_trace_in_the_serving_process(store: Store) -> None:
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=RateLimit(100))
    client = TestClient(app)
    tokens = {u: issue_token(store, u) for u in (ANN, BOB)}
    for user, token in tokens.items():
        h = bearer(token)
        r = client.post("/v1/conversations", headers=h, json={"title": f"{user}'s"})
        assert r.status_code == 201, r.text
        r = client.post(f"/v1/conversations/{r.json()['id']}/messages",
                        json={"content": f"I am {user}"},
                        headers={**h, "Idempotency-Key": f"k-{user}"})
        assert r.status_code == 200, r.text
        r = client.post("/v1/chat/completions", headers={**h, "X-Colloquy-Conversation": "oa"},
                        json={"messages": [{"role": "user", "content": f"{user} via openai"}]})
        assert r.status_code == 200, r.text
        assert client.post("/v1/memory", headers=h,
                           json={"statement": f"likes {user}"}).status_code == 201
    ann = [c.id for c in store.list_conversations(user_id=ANN)]
    assert len(ann) == 2
    model = app.state.service.default_model
    assert ANN in held_text(model)  # what the model was sent, both routes
    r = client.delete("/v1/me", headers=bearer(tokens[ANN]))
    assert r.status_code == 200, r.text
    assert client.get("/v1/me", headers=bearer(tokens[ANN])).status_code == 401
    service = app.state.service
    assert_gone(rows_text(store), ANN, ann, "the database")
    assert_gone(held_text(store, service), ANN, ann, "the serving process")
    assert BOB in held_text(store, service) + rows_text(store)
    assert BOB in held_text(model)  # only the deleted user's requests were dropped
    export = client.get("/v1/me/export", headers=bearer(tokens[BOB]))
    assert ANN not in json.dumps(export.json())


def live_strings(needle: str) -> list[str]:
    """Every string (or bytes) containing ``needle`` that any object of this process refers to
    (after a collection): the referents of every object the garbage collector tracks, frozen
    ones included (colloquy.gc_freeze: gc.get_objects() does not list them), and of the
    containers it does not track (a dict or tuple of strings only), reached through them. So a
    text held as a dict key, in a set, in an ``functools.lru_cache`` or in an object's
    ``__dict__`` is found, not only one in a tracked list or dict's values."""
    gc.unfreeze()
    gc.collect()
    found: list[str] = []
    seen: set[int] = set()
    todo = gc.get_objects()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:
            referents = gc.get_referents(obj)
        except RuntimeError:  # pragma: no cover - changed while read (another thread)
            continue
        for ref in referents:
            kind = type(ref)  # (type(), not isinstance: some __class__ are properties that warn)
            if kind is str or kind is bytes or kind is bytearray:
                text = ref if kind is str else bytes(ref).decode("utf-8", "replace")
                if needle in text:
                    found.append(text)
            elif kind in (dict, tuple, list, set, frozenset) and not gc.is_tracked(ref):
                todo.append(ref)  # untracked containers: not in gc.get_objects()
    return found


def test_a_user_deleted_by_another_process_leaves_the_serving_process(db: str) -> None:  # noqa: F811
    store = open_store(db)
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None,
                     sweep_interval=0.5)
    tokens = {u: issue_token(store, u) for u in (ANN, BOB)}  # type: ignore[arg-type]
    try:
        with TestClient(app) as client:  # its lifespan runs the sweeps
            for user, token in tokens.items():
                h = bearer(token)
                cid = client.post("/v1/conversations", headers=h, json={}).json()["id"]
                assert client.post(f"/v1/conversations/{cid}/messages", headers=h,
                                   json={"content": f"said-{user} 1"}).status_code == 200
                assert client.post("/v1/chat/completions",
                                   headers={**h, "X-Colloquy-Conversation": "oa"},
                                   json={"messages": [{"role": "user",
                                                       "content": f"said-{user} 2"}]}
                                   ).status_code == 200
            service = app.state.service
            assert f"said-{ANN}" in held_text(service)  # the cached Chats and the model's record
            assert live_strings(f"said-{ANN}")
            done = subprocess.run(
                [sys.executable, "-m", "colloquy", "users", "delete", ANN, "--yes", "--db", db],
                capture_output=True, text=True, env=clean_env(), timeout=120)
            assert done.returncode == 0, done.stderr
            # Nothing in this process touches ANN's conversations again: only the sweep can
            # tell it they are gone. Polled (a loaded machine), bounded well above 0.5 s.
            deadline = time.monotonic() + 30
            while live_strings(f"said-{ANN}") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not live_strings(f"said-{ANN}"), live_strings(f"said-{ANN}")[:5]
            assert_gone(held_text(service), ANN, [], "the serving process")
            assert f"said-{BOB}" in held_text(service)  # the other user's stay cached
    finally:
        store.close()


def _estimate_secret_texts() -> None:
    """Estimates that leave a text in the process-wide memos (no reference kept here)."""
    from colloquy.messages import Message
    from colloquy.tokens import estimate_message, estimate_text, note_estimate

    estimate_text("memo-zqcarl one")
    estimate_message(Message.user("memo-zqcarl two"))
    note_estimate("memo-zqcarl three", 3)


def test_any_deletion_empties_the_process_wide_text_memos() -> None:
    """Token estimates are memoised by text or by message, whatever their conversation: a memo
    cannot tell a deleted user's entries apart, so any forgotten conversation empties it."""
    from colloquy.caches import forget_cached

    _estimate_secret_texts()
    assert live_strings("memo-zqcarl")  # held by the memos
    forget_cached(["c_any"])
    assert live_strings("memo-zqcarl") == []


class _Node:
    """An object in a reference cycle (weakly referenceable, to see when it is freed)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.me = self


def _frozen_cycle() -> weakref.ref[_Node]:
    node = _Node("cycle-zqdora")  # freed by the collector only (it refers to itself)
    gc.freeze()
    return weakref.ref(node)


def test_reclaim_collects_garbage_that_died_frozen_and_freezes_again() -> None:
    from colloquy.gc_freeze import _malloc_trim, reclaim

    gc.collect()
    dead = _frozen_cycle()
    try:
        gc.collect()
        assert dead() is not None  # died frozen: a collection does not see it
        reclaim()
        assert dead() is None
        assert gc.get_freeze_count() > 0  # what is alive is frozen again
    finally:
        gc.unfreeze()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
