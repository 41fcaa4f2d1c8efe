"""Concurrent turns on one conversation, from several real processes, on SQLite and PostgreSQL.

The promise: turns never interleave into an invalid history, and no message is duplicated or
lost, however many devices send at once. Several worker processes (tests/turn_worker.py) race to
create the same conversation and then send to it, some streaming, some retrying a request with
the same idempotency key; afterwards every message must be there exactly once, in a valid order,
each reply answering the message just before it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colloquy import Chat, EchoModel, FunctionModel, ScriptedModel
from colloquy.context import problems
from colloquy.errors import ConversationBusy
from colloquy.store import MemoryStore, SQLiteStore, Store
from pg_helpers import require_postgres_url, throwaway_postgres_store

WORKER = str(Path(__file__).with_name("turn_worker.py"))


class Backend:
    """A store for the test process plus the arguments a worker needs to open the same one."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.store: Store = SQLiteStore(tmp_path / "shared.db")
            self.args = ["--db", str(tmp_path / "shared.db")]
        else:
            require_postgres_url()
            self.store = throwaway_postgres_store()
            self.args = ["--db", self.store.url, "--schema", self.store.schema]  # type: ignore[attr-defined]

    def worker(self, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, WORKER, *self.args, *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
        )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(str(request.param), tmp_path)
    try:
        yield b
    finally:
        b.store.close()


def check_history(store: Store, session: str, expected_texts: set[str]) -> list[Any]:
    """Every expected message exactly once, roles alternating, each reply answering its turn."""
    log = store.load(session)
    messages = [sm.message for sm in log]
    assert problems(messages) == []
    assert [sm.seq for sm in log] == list(range(1, len(log) + 1))
    users = [m.text for m in messages if m.role == "user"]
    assert Counter(users) == Counter(expected_texts), "a message was lost or duplicated"
    assert len(log) == 2 * len(expected_texts)
    for question, answer in zip(messages[::2], messages[1::2]):
        assert question.role == "user" and answer.role == "assistant"
        # The echo model names the last user text it saw: the reply was computed on this turn.
        assert answer.text.endswith(f"last user text: {question.text!r}")
    return log


def test_many_processes_sending_to_one_conversation(backend: Backend) -> None:
    senders, count = 4, 6
    start_at = time.time() + 1.5  # after every worker has imported colloquy
    procs = [
        backend.worker("--session", "c_shared", "--mode", "concurrent", "--sender", f"w{i}",
                       "--count", str(count), "--start-at", str(start_at), "--latency", "0.003",
                       "--retry-every", "3", "--stream-every", "2")
        for i in range(senders)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert out.strip().endswith("DONE")

    expected = {f"w{i}-{j}" for i in range(senders) for j in range(count)}
    log = check_history(backend.store, "c_shared", expected)

    # Each sender's messages are in the order it sent them, and a retried request got the seq
    # of the stored reply back instead of a second turn.
    order = {sm.message.text: sm.seq for sm in log if sm.role == "user"}
    for i, (out, _) in enumerate(outputs):
        sent = [line.split() for line in out.splitlines() if line.startswith("SENT")]
        assert len(sent) == count + len(range(0, count, 3))
        seqs: dict[str, set[int]] = {}
        for _, text, seq in sent:
            seqs.setdefault(text, set()).add(int(seq))
        assert all(len(s) == 1 for s in seqs.values()), "a retry got a different reply"
        assert [order[f"w{i}-{j}"] for j in range(count)] == sorted(order[f"w{i}-{j}"] for j in range(count))
        for text, (seq,) in seqs.items():
            assert seq == order[text] + 1  # the reply right after the message
    conv = backend.store.get_conversation("c_shared")
    assert conv.user_id == "u_shared" and conv.last_seq == len(log)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_threads_in_one_process_take_turns(kind: str, tmp_path: Path) -> None:
    """Several Chat objects (one per thread, as a server would hold) on one conversation."""
    store: Store
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        store = SQLiteStore(tmp_path / "t.db")
    else:
        require_postgres_url()
        store = throwaway_postgres_store()
    try:
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                chat = Chat(EchoModel(latency=0.002), store=store, session_id="c_t")
                for j in range(5):
                    chat.send(f"t{i}-{j}", idempotency_key=f"t{i}-{j}")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        check_history(store, "c_t", {f"t{i}-{j}" for i in range(4) for j in range(5)})
    finally:
        store.close()


def test_a_retried_key_is_stored_once_and_returns_the_stored_reply(store: Store) -> None:
    calls: list[str] = []
    model = FunctionModel(lambda req: (calls.append(req.messages[-1].text), f"answer {len(calls)}")[1])
    chat = Chat(model, store=store, session_id="c_idem")
    first = chat.send("book the table", idempotency_key="req-1")
    again = Chat(model, store=store, session_id="c_idem").send("book the table", idempotency_key="req-1")
    assert again.text == first.text == "answer 1" and again.seq == first.seq
    assert len(calls) == 1 and len(store.load("c_idem")) == 2
    streamed = list(chat.stream("book the table", idempotency_key="req-1"))
    assert streamed[0] == "answer 1" and streamed[-1].seq == first.seq  # type: ignore[union-attr]
    other = chat.send("and a taxi", idempotency_key="req-2")
    assert other.seq == 4 and len(calls) == 2
    assert store.find_by_idempotency_key("c_idem", "req-1").seq == 1  # type: ignore[attr-defined]
    assert store.find_by_idempotency_key("c_idem", "nope") is None  # type: ignore[attr-defined]


def test_a_retry_after_a_failed_call_finishes_the_turn_without_a_second_message(store: Store) -> None:
    flaky = ScriptedModel([RuntimeError("network down"), "sorry for the wait"])
    chat = Chat(flaky, store=store, session_id="c_retry")
    with pytest.raises(Exception, match="network down"):
        chat.send("hello?", idempotency_key="k1")
    reply = chat.send("hello?", idempotency_key="k1")
    assert reply.text == "sorry for the wait"
    log = store.load("c_retry")
    assert [sm.message.text for sm in log] == ["hello?", "sorry for the wait"]


def test_the_turn_lock_times_out_with_a_clear_error(store: Store) -> None:
    lock = store.lock  # type: ignore[attr-defined]
    with lock("c_busy"):
        got: list[BaseException] = []

        def other() -> None:
            try:
                with lock("c_busy", timeout=0.2):
                    pass
            except ConversationBusy as e:
                got.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(got) == 1 and "c_busy" in str(got[0]) and "busy" in str(got[0])
        with lock("c_other", timeout=0.2):  # other conversations are not blocked
            pass
    with lock("c_busy", timeout=0.2):  # released
        pass
