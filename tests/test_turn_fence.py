"""A turn that loses its lock never commits as if it held it (store/locks.py, Fencing).

The case (an outside tester's, with real processes on PostgreSQL): turns of one conversation are
serialised across processes by an advisory lock held on a connection of its own. When that
connection drops during a turn (the server restarted, the backend was terminated), the server
frees the lock while the turn's model call goes on; another process's turn then takes the
conversation and runs to the end. Before fencing, the first turn still tried to store its reply,
and its idempotent retry replayed the *other* request's reply (the first assistant message after
its key). Now each turn writes a fresh fence into the conversation's record when it takes the
lock, its appends require it, so the losing turn fails with :class:`TurnLockLost` (its message
kept, its reply not stored), and a retry of its key stores nothing and replays nothing that is
not its own (:class:`TurnSuperseded` when another turn was answered after its message).

On SQLite the lock is a kernel byte lock that dies only with its process (a killed holder cannot
commit anything); the one way two live processes can hold "the same" lock is the ``<db>.locks``
file deleted under them, and the fence refuses the loser there too.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest

from colloquy import Chat, EchoModel, FunctionModel, TurnLockLost, TurnSuperseded
from colloquy.models import ModelRequest
from colloquy.server.errors import retry_after, status_for
from colloquy.store import Store
from colloquy.store.base import NewMessage
from colloquy.messages import Message
from test_concurrency import Backend, backend  # noqa: F401 - the fixture (sqlite, postgres)


class Worker:
    """A turn_worker.py process and the lines it prints."""

    def __init__(self, b: Backend, *args: str) -> None:
        self.proc = b.worker(*args, stdin=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"worker exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
                continue
            if line.startswith(prefix):
                return line
            raise AssertionError(f"expected {prefix!r}, got {line!r}")
        raise AssertionError(f"worker never printed {prefix!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        return self.proc.wait(timeout=60)


def send(b: Backend, text: str, key: str) -> str:
    """One turn by a fresh process (an echo model): its REPLY or FAILED line."""
    w = Worker(b, "--session", "c_f", "--mode", "send", "--text", text, "--key", key)
    line = w.expect("")
    w.finish()
    return line


def texts(store: Store) -> list[str]:
    return [sm.message.text for sm in store.load("c_f")]


def a_then_b(store: Store) -> bool:
    """The log is A's message, then B's turn (B's echoed reply), and nothing else."""
    log = texts(store)
    return len(log) == 3 and log[:2] == ["question A", "question B"] \
        and log[2].endswith("last user text: 'question B'")


def terminate_lock_backend(b: Backend) -> int:
    """Terminate the PostgreSQL session holding c_f's turn lock (what a server restart does to
    it), leaving every other session of the cluster alone; the number terminated."""
    import psycopg

    key = b.store.advisory.key("c_f")  # type: ignore[attr-defined]
    with psycopg.connect(b.store.url, autocommit=True) as admin:  # type: ignore[attr-defined]
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND ((classid::bigint << 32) | objid::bigint) = %s", (key,)).fetchall()
        for _ in range(100):  # the termination is asynchronous: wait until the lock is free
            if admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                             "((classid::bigint << 32) | objid::bigint) = %s",
                             (key,)).fetchone() == (0,):
                break
            time.sleep(0.05)
    return len(rows)


def lose_the_lock(b: Backend) -> None:
    if b.kind == "postgres":
        assert terminate_lock_backend(b) == 1
    else:
        # A byte lock cannot be lost while its process lives; a lock file deleted under the
        # running processes is the one way: the next process locks a new file.
        os.unlink(f"{b.args[1]}.locks")


def test_a_turn_that_lost_its_lock_to_another_turn_stores_no_reply_and_its_retry_replays_none(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    b = backend
    a = Worker(b, "--session", "c_f", "--mode", "paused", "--text", "question A", "--key", "kA")
    a.expect("READY")  # A holds the lock, its message is stored, its model call waits
    lose_the_lock(b)
    assert send(b, "question B", "kB") == "REPLY 3"  # B took the conversation and finished
    a.go()
    assert a.expect("FAILED") == "FAILED TurnLockLost"
    assert a.finish() == 3
    # A's message is kept, its reply (which would land after B's turn) is not stored.
    assert a_then_b(b.store)
    # A retry of A's key stores nothing and replays nothing: the only reply after its message
    # is B's. B's own key still replays B's reply.
    assert send(b, "question A", "kA") == "FAILED TurnSuperseded"
    assert send(b, "question B", "kB") == "REPLY 3"
    assert a_then_b(b.store)


def test_a_lost_lock_that_no_other_turn_took_lets_the_turn_finish(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    """The usual restart: the lock connection dropped, nobody else sent meanwhile; the fence is
    still the turn's, so it stores its reply (PostgreSQL: the lock is re-taken on reconnect)."""
    b = backend
    a = Worker(b, "--session", "c_f", "--mode", "paused", "--text", "question A", "--key", "kA")
    a.expect("READY")
    lose_the_lock(b)
    a.go()
    assert a.expect("REPLY") == "REPLY 2"
    assert a.finish() == 0
    assert texts(b.store) == ["question A", "answer to question A"]
    assert send(b, "question A", "kA") == "REPLY 2"  # its own reply, replayed


def test_sqlite_a_killed_holder_commits_nothing_and_its_retry_replays_no_other_reply(
    tmp_path: Path,
) -> None:
    """What holds on SQLite: the byte lock dies with its process, so the holder cannot commit
    after losing it; the next process's turn runs, and a retry of the dead turn's key neither
    stores its message again nor replays that other turn's reply."""
    b = Backend("sqlite", tmp_path)
    try:
        a = Worker(b, "--session", "c_f", "--mode", "paused", "--text", "question A",
                   "--key", "kA")
        a.expect("READY")
        os.kill(a.proc.pid, signal.SIGKILL)
        a.finish()
        assert send(b, "question B", "kB") == "REPLY 3"
        assert send(b, "question A", "kA") == "FAILED TurnSuperseded"
        assert a_then_b(b.store)
    finally:
        b.store.close()


# -- in one process, every store ------------------------------------------------------------------


def test_an_append_with_a_fence_another_turn_replaced_stores_nothing(store: Store) -> None:
    assert store.claim_turn("c_f", "f1") is False  # no record yet: nothing to fence
    store.create_conversation(id="c_f")
    assert store.claim_turn("c_f", "f1") is True
    store.append("c_f", [NewMessage(message=Message.user("mine"))], fence="f1")
    assert store.claim_turn("c_f", "f2") is True  # another turn took the lock
    with pytest.raises(TurnLockLost):
        store.append("c_f", [NewMessage(message=Message.assistant("late"))], fence="f1")
    assert [sm.message.text for sm in store.load("c_f")] == ["mine"]
    assert store.get_conversation("c_f").last_seq == 1  # the refused append left no trace
    store.append("c_f", [NewMessage(message=Message.assistant("theirs"))], fence="f2")
    store.append("c_f", [NewMessage(message=Message.user("unfenced"))])  # no fence: no check


def test_claim_turn_read_claims_and_returns_the_log_after_the_seq(store: Store) -> None:
    """A turn's claim and its read of the log in one call: what ``claim_turn`` then
    ``read_log(after_seq)`` give, the read skipped when nothing is new, the fence written
    either way."""
    assert store.claim_turn_read("c_f", "f0", 0) is None  # no record: nothing claimed
    conv = store.create_conversation(id="c_f")
    store.append("c_f", [NewMessage(message=Message.user("one")),
                         NewMessage(message=Message.assistant("two"))])
    read = store.claim_turn_read("c_f", "f1", 0)
    assert read is not None and (read.generation, read.last_seq) == (conv.generation, 2)
    assert [(sm.seq, sm.message.text) for sm in read.messages] == [(1, "one"), (2, "two")]
    assert [sm.message.text for sm in store.claim_turn_read("c_f", "f1", 1).messages] == ["two"]
    store.append("c_f", [NewMessage(message=Message.user("three"))], fence="f1")
    nothing_new = store.claim_turn_read("c_f", "f2", 3)  # another turn took the lock
    assert nothing_new is not None and nothing_new.messages == []
    assert (nothing_new.generation, nothing_new.last_seq) == (conv.generation, 3)
    with pytest.raises(TurnLockLost):  # claimed, though nothing was read
        store.append("c_f", [NewMessage(message=Message.assistant("late"))], fence="f1")
    store.append("c_f", [NewMessage(message=Message.assistant("four"))], fence="f2")
    assert [sm.message.text for sm in store.claim_turn_read("c_f", "f3", 3).messages] == ["four"]
    store.delete_conversation("c_f")
    assert store.claim_turn_read("c_f", "f4", 4) is None
    anew = store.create_conversation(id="c_f")  # replaced: another generation, read from 0
    read = store.claim_turn_read("c_f", "f5", 4)
    assert read is not None and (read.generation, read.messages) == (anew.generation, [])
    assert anew.generation != conv.generation
    store.append("c_f", [NewMessage(message=Message.user("new"))], fence="f5")


def test_a_store_without_claim_turn_read_still_fences_and_syncs_the_turn() -> None:
    """A store written before ``claim_turn_read``: the turn claims (claim_turn) and reads
    (read_log) as two calls, and is fenced and current as on the shipped stores."""
    from colloquy.store import MemoryStore

    class OlderStore(MemoryStore):
        claim_turn_read = None  # type: ignore[assignment]

    store = OlderStore()
    chat = Chat(EchoModel(), store=store, session_id="c_f")
    chat.send("earlier")
    store.append("c_f", [NewMessage(message=Message.user("elsewhere"))])  # another writer
    chat.send("later")  # appended after "elsewhere": a log not read would conflict
    assert texts(store)[2:4] == ["elsewhere", "later"]
    assert [sm.message.text for sm in chat.history()] == texts(store)

    def overtaken(req: ModelRequest) -> str:
        store.claim_turn("c_f", "other turn")
        return "answer A"

    with pytest.raises(TurnLockLost):
        Chat(FunctionModel(overtaken), store=store, session_id="c_f").send("question A")
    assert texts(store)[-1] == "question A"


@pytest.mark.parametrize("first_turn", [True, False])
def test_a_chat_turn_overtaken_mid_call_fails_and_its_retry_is_refused(
    store: Store, first_turn: bool
) -> None:
    """Another turn claims the conversation and answers while this turn's model call runs (what
    happens once its lock is lost): this turn stores no reply, its retry replays nothing."""
    before: list[str] = []
    if not first_turn:
        Chat(EchoModel(), store=store, session_id="c_f").send("earlier")
        before = texts(store)

    def overtaken(req: ModelRequest) -> str:
        store.claim_turn("c_f", "other turn")
        last = store.get_conversation("c_f").last_seq
        store.append("c_f", [NewMessage(message=Message.user("question B")),
                             NewMessage(message=Message.assistant("answer B"))],
                     expected_seq=last, fence="other turn")
        return "answer A"

    chat = Chat(FunctionModel(overtaken), store=store, session_id="c_f")
    with pytest.raises(TurnLockLost) as err:
        chat.send("question A", idempotency_key="kA")
    assert "send again" in err.value.client_message()
    assert texts(store) == [*before, "question A", "question B", "answer B"]
    with pytest.raises(TurnSuperseded):
        Chat(EchoModel(), store=store, session_id="c_f").send("question A", idempotency_key="kA")
    assert texts(store) == [*before, "question A", "question B", "answer B"]
    reply = Chat(EchoModel(), store=store, session_id="c_f").send("next")  # the chat goes on
    assert reply.text.endswith("last user text: 'next'")


def test_the_service_answers_a_lost_lock_with_a_retry() -> None:
    assert status_for(TurnLockLost("c")) == (409, "conversation_busy")
    assert retry_after(TurnLockLost("c")) == 1
    assert status_for(TurnSuperseded("c", 1)) == (409, "conflict")
    assert retry_after(TurnSuperseded("c", 1)) is None


def test_over_http_the_overtaken_turn_is_409_with_retry_after_and_its_retry_409_conflict() -> None:
    from fastapi.testclient import TestClient

    from colloquy.server import create_app
    from colloquy.store import MemoryStore
    from colloquy.store.users import issue_token
    from server_helpers import bearer

    store = MemoryStore()

    def overtaken(req: ModelRequest) -> str:
        (conv,) = store.list_conversations()
        store.claim_turn(conv.id, "other turn")  # another worker's turn took the conversation
        store.append(conv.id, [NewMessage(message=Message.user("question B")),
                               NewMessage(message=Message.assistant("answer B"))],
                     expected_seq=conv.last_seq, fence="other turn")
        return "answer A"

    app = create_app(store=store, model=FunctionModel(overtaken), environ={}, rate_limit=None)
    client = TestClient(app)
    h = bearer(issue_token(store, "ann"))
    cid = client.post("/v1/conversations", headers=h, json={}).json()["id"]
    sent = {"headers": {**h, "Idempotency-Key": "kA"}, "json": {"content": "question A"}}
    r = client.post(f"/v1/conversations/{cid}/messages", **sent)  # type: ignore[arg-type]
    assert (r.status_code, r.json()["error"]["type"]) == (409, "conversation_busy"), r.text
    assert r.headers["retry-after"] == "1"
    r = client.post(f"/v1/conversations/{cid}/messages", **sent)  # type: ignore[arg-type]
    assert (r.status_code, r.json()["error"]["type"]) == (409, "conflict"), r.text
    (conv,) = store.list_conversations()
    assert [sm.message.text for sm in store.load(conv.id)] == [
        "question A", "question B", "answer B"]
