"""Where a turn's steps run (issue 16, CPU per turn): on the event loop when the store never
waits on a network (SQLite, memory), on the step threads with PostgreSQL, with
``steps="threads"``, and from the point a turn says its own steps may wait (a guard, fact
extraction, a title, a policy calling a model or an encoder: colloquy.effects.MayWait)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from colloquy import Chat, EchoModel, MemoryStore, RollingWindow, SQLiteStore
from colloquy.context.default import DefaultPolicy
from colloquy.effects import arun, policy_may_wait, steps_may_wait
from colloquy.errors import ConfigError
from colloquy.guards.base import FunctionGuard
from colloquy.memory.extract import FactExtraction
from colloquy.server import create_app
from colloquy.server.service import steps_stay_local
from colloquy.server.steps import BEHIND, IDLE, LoopLag
from colloquy.store.users import issue_token
from colloquy.turn_options import NO_OPTIONS
from server_helpers import bearer


class Recording:
    """The default policy (keywords), saying whether its build may wait, and noting the
    thread each build runs on: where the turn's steps run."""

    def __init__(self, waits: bool) -> None:
        self.inner = DefaultPolicy(retriever="bm25")
        self.waits = waits
        self.threads: list[str] = []

    def may_wait(self, inp: Any) -> bool:
        return self.waits

    def build(self, inp: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.inner.build(inp)


def app_with(store: Any, **options: Any) -> tuple[Any, TestClient, dict[str, str]]:
    token = issue_token(store, "ada")
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None, **options)
    return app, TestClient(app), bearer(token)


def count_trips(service: Any) -> list[str]:
    """The names of the functions handed to the service's step threads, as they are."""
    trips: list[str] = []
    submit = service.executor.submit

    def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(args[0] if args else fn, "__name__", repr(fn)))
        return submit(fn, *args, **kwargs)

    service.executor.submit = counted
    return trips


def test_auto_runs_steps_on_the_loop_only_with_a_store_in_this_process(store: Any) -> None:
    """SQLite and memory: creating, JSON turns and a stream make no hand-over to a thread;
    PostgreSQL (every call a round trip): the turn's two steps around the model call go to the
    threads, as before. The answers are the same."""
    app, client, auth = app_with(store)
    service = app.state.service
    local = store.url == "memory" or isinstance(store, SQLiteStore)
    assert steps_stay_local(store) is local and service.inline_steps is local
    trips = count_trips(service)
    cid = client.post("/v1/conversations", json={}, headers=auth).json()["id"]
    for text in ("first", "second"):
        r = client.post(f"/v1/conversations/{cid}/messages", json={"content": text},
                        headers=auth)
        assert r.status_code == 200 and r.json()["text"].endswith(repr(text))
    with client.stream("POST", f"/v1/conversations/{cid}/messages",
                       json={"content": "third", "stream": True}, headers=auth) as s:
        assert "third" in "".join(s.iter_text())
    # on threads: creating (1), each JSON turn's two steps around the model call (2 x 2),
    # the stream's token lookup and set-up (its FastAPI route) and its two steps (4)
    assert len(trips) == (0 if local else 9)
    log = client.get(f"/v1/conversations/{cid}", headers=auth).json()["messages"]
    assert [m["role"] for m in log] == ["user", "assistant"] * 3


def test_threads_setting_and_bad_values(tmp_path: Path) -> None:
    local_store = SQLiteStore(tmp_path / "t.db")
    app, client, auth = app_with(local_store, steps="threads")
    assert not app.state.service.inline_steps
    trips = count_trips(app.state.service)
    cid = client.post("/v1/conversations", json={}, headers=auth).json()["id"]
    assert client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"},
                       headers=auth).status_code == 200
    assert len(trips) == 3  # creating (1), the turn's two steps around the model call (2)
    with pytest.raises(ConfigError, match="steps must be one of auto, threads"):
        create_app(store=local_store, model=EchoModel(), environ={}, steps="loop")


@pytest.mark.parametrize("waits", [False, True])
def test_a_turn_whose_steps_may_wait_moves_to_the_threads(tmp_path: Path, waits: bool) -> None:
    """A policy (or a guard, fact extraction, a title) that may call a model: from the
    turn's start on, its steps run on the step threads, and the event loop never waits for
    them; one that says it never waits builds on the loop's thread."""
    store = SQLiteStore(tmp_path / "w.db")
    policy = Recording(waits)
    app, client, auth = app_with(store, policy=policy)
    assert app.state.service.inline_steps  # the store allows it; the turn itself moves
    trips = count_trips(app.state.service)
    cid = client.post("/v1/conversations", json={}, headers=auth).json()["id"]
    r = client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"}, headers=auth)
    assert r.status_code == 200 and r.json()["text"].endswith("'hi'")
    on_threads = [name.startswith("colloquy-step") for name in policy.threads]
    assert on_threads == [waits]
    assert len(trips) == (2 if waits else 0)  # the rest of the first step; the one after the call
    store.close()


def test_a_guard_moves_the_turn_to_the_threads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    app, client, auth = app_with(store, guards=[FunctionGuard(lambda text: True)])
    trips = count_trips(app.state.service)
    cid = client.post("/v1/conversations", json={}, headers=auth).json()["id"]
    r = client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"}, headers=auth)
    assert r.status_code == 200 and len(trips) == 2
    store.close()


def test_what_makes_a_turn_s_steps_wait() -> None:
    """steps_may_wait: a guard, fact extraction, an untitled conversation whose model
    titles it; policy_may_wait (asked before each build): a policy without ``may_wait`` (any
    policy may call a model); the default policy on keywords never, and the default one itself
    (echo: no title call) not."""
    def chat(**kw: Any) -> Chat:
        return Chat(EchoModel(), store=MemoryStore(), **kw)

    plain = chat(policy=DefaultPolicy(retriever="bm25"))
    assert not steps_may_wait(plain) and not policy_may_wait(plain, plain._log, NO_OPTIONS)
    window = chat(policy=RollingWindow(turns=4))
    assert policy_may_wait(window, window._log, NO_OPTIONS)
    assert steps_may_wait(chat(policy=DefaultPolicy(retriever="bm25"),
                               guards=[FunctionGuard(lambda t: True)]))
    assert steps_may_wait(chat(policy=DefaultPolicy(retriever="bm25"),
                               extract_facts=FactExtraction()))
    titled = chat(policy=DefaultPolicy(retriever="bm25"), title_model=EchoModel())
    assert steps_may_wait(titled)  # a title call on the first exchange
    titled.send("hello there")
    assert titled.conversation is not None and titled.conversation.title
    assert not steps_may_wait(titled)  # titled: no call any more


def test_the_dense_default_policy_waits_only_once_recall_is_needed() -> None:
    """With sentence embeddings, recall embeds the question (waiting its turn for the shared
    encoder): only once the log no longer fits whole; on keywords alone, never."""
    pytest.importorskip("sentence_transformers")  # the dev extra installs it (CI)
    dense = Chat(EchoModel(), store=MemoryStore(),
                 policy=DefaultPolicy(max_input_tokens=300, retriever="hybrid"))
    bm25 = Chat(EchoModel(), store=MemoryStore(),
                policy=DefaultPolicy(max_input_tokens=300, retriever="bm25"))
    for c in (dense, bm25):
        c.send("a short first message")
    assert not policy_may_wait(dense, dense._log, NO_OPTIONS)
    assert not policy_may_wait(bm25, bm25._log, NO_OPTIONS)
    for i in range(12):
        for c in (dense, bm25):
            c.send(f"message {i}: " + "words about the garden and the weather " * 3)
    assert policy_may_wait(dense, dense._log, NO_OPTIONS)
    assert not policy_may_wait(bm25, bm25._log, NO_OPTIONS)


class Asked:
    """The dense default policy, noting for each build the thread it ran on and whether the
    policy says that very build may wait (its ``may_wait`` of the input built)."""

    def __init__(self) -> None:
        self.inner = DefaultPolicy(max_input_tokens=300, retriever="hybrid")
        self.builds: list[tuple[str, bool]] = []

    def may_wait(self, inp: Any) -> bool:
        return self.inner.may_wait(inp)

    def build(self, inp: Any) -> Any:
        self.builds.append((threading.current_thread().name, self.inner.may_wait(inp)))
        return self.inner.build(inp)


def test_a_build_that_may_wait_never_runs_on_the_loop(tmp_path: Path) -> None:
    """The policy is asked about the log it will build from: a turn whose own message makes
    the log no longer fit (recall then embeds the question) builds on the threads. It was
    asked about the log before the message, said no, and the build ran on the loop."""
    pytest.importorskip("sentence_transformers")  # the dev extra installs it (CI)
    store = SQLiteStore(tmp_path / "f.db")
    policy = Asked()
    app, client, auth = app_with(store, policy=policy)
    cid = client.post("/v1/conversations", json={}, headers=auth).json()["id"]
    for text in ("short one", "short two", "the garden and the weather " * 100):
        r = client.post(f"/v1/conversations/{cid}/messages", json={"content": text},
                        headers=auth)
        assert r.status_code == 200
    assert [waits for _, waits in policy.builds] == [False, False, True]
    on_the_loop = [waits for thread, waits in policy.builds
                   if not thread.startswith("colloquy-step")]
    assert on_the_loop == [False, False]
    store.close()


def test_count_tokens_builds_on_the_threads(tmp_path: Path) -> None:
    """``POST /v1/messages/count_tokens`` builds the context a turn would send, outside a
    turn (nothing says MayWait): on the step threads, never on the loop. On the loop, a
    summary policy whose model took 2 s held every request of the worker 2 s (/healthz)."""
    store = SQLiteStore(tmp_path / "c.db")
    policy = Recording(waits=True)
    app, client, auth = app_with(store, policy=policy)
    first = [{"role": "user", "content": "the first question"}]
    body = {"model": "echo", "max_tokens": 100, "messages": first,
            "metadata": {"user_id": "counted"}}
    r = client.post("/v1/messages", json=body, headers=auth)
    assert r.status_code == 200
    history = [*first, {"role": "assistant", "content": r.json()["content"][0]["text"]},
               {"role": "user", "content": "and how many tokens is this?"}]
    for metadata in ({"user_id": "counted"}, None):  # the stored conversation; none yet
        policy.threads.clear()
        r = client.post("/v1/messages/count_tokens", headers=auth,
                        json={"model": "echo", "messages": history, "metadata": metadata})
        assert r.status_code == 200 and r.json()["input_tokens"] > 0
        assert policy.threads and all(t.startswith("colloquy-step") for t in policy.threads)
    store.close()


@pytest.mark.parametrize("waits", [False, True])
def test_the_drivers_carry_on_after_may_wait(waits: bool) -> None:
    """MayWait is answered by every driver: the sync one and the threaded async one carry on
    at once (the policy builds where the steps were running); the inline one runs the rest of
    the turn on its executor."""
    policy = Recording(waits)
    chat = Chat(EchoModel(), store=MemoryStore(), policy=policy)
    assert chat.send("sync").text.endswith("'sync'")
    assert policy.threads == [threading.current_thread().name]

    async def drive(inline: bool) -> tuple[Any, str]:
        with ThreadPoolExecutor(1, thread_name_prefix="steps") as pool:
            reply = None
            async for event in arun(chat._turn("async", False, None, NO_OPTIONS, None), pool,
                                    inline=inline):
                reply = event
            return reply, threading.current_thread().name

    for inline in (False, True):
        policy.threads.clear()
        reply, loop_thread = asyncio.run(drive(inline))
        assert reply.text.endswith("'async'")
        expected = "steps" if waits or not inline else loop_thread
        assert len(policy.threads) == 1 and policy.threads[0].startswith(expected)


def test_the_loop_lag_says_when_the_loop_runs_behind() -> None:
    """A loop blocked longer than BEHIND is behind until beats come on time for BEHIND; the
    heartbeat stops once no turn asks for IDLE seconds (an idle server never wakes)."""
    lag = LoopLag()

    async def go() -> list[bool]:
        seen = [lag.watch()]
        time.sleep(BEHIND * 1.5)  # the loop's thread busy: the next beat comes late
        await asyncio.sleep(0.02)
        seen.append(lag.watch())
        await asyncio.sleep(BEHIND + 0.1)  # beats on time again, long enough
        seen.append(lag.watch())
        await asyncio.sleep(IDLE + 0.2)  # no turn: the heartbeat stops
        seen.append(lag._loop is None)
        return seen

    assert asyncio.run(go()) == [False, True, False, True]


def test_turns_go_to_the_threads_while_the_loop_runs_behind(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "b.db")
    app, client, auth = app_with(store)
    service = app.state.service
    trips = count_trips(service)
    cid = client.post("/v1/conversations", json={}, headers=auth).json()["id"]
    assert client.post(f"/v1/conversations/{cid}/messages", json={"content": "on the loop"},
                       headers=auth).status_code == 200
    assert trips == []
    service.lag.watch = lambda: True  # the heartbeat's verdict; the turns' routing is tested
    r = client.post(f"/v1/conversations/{cid}/messages", json={"content": "on threads"},
                    headers=auth)
    assert r.status_code == 200 and r.json()["seq"] == 4
    assert len(trips) == 2
    store.close()
