"""Crash safety: a process killed (SIGKILL) at any point of a turn leaves a conversation that
loads and continues, and the user's message is never lost.

A real worker process (tests/turn_worker.py) runs the turn; the test kills it at a chosen point:
inside the model call, in the middle of a streamed reply, while it waits to store the reply (the
test holds the database's write lock, so the process is caught exactly there), and inside a tool
call. Then this process (another "device") loads the conversation, checks the message is there,
retries the killed request with its idempotency key (stored once, answered once) and goes on.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from colloquy import Chat, EchoModel
from colloquy.context import problems
from test_concurrency import Backend, backend  # noqa: F401 - the fixture (sqlite, postgres)




def wait_for(proc: Any, word: str, timeout: float = 60.0) -> None:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lines.get(timeout=0.1) == word:
                return
        except queue.Empty:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited early: {proc.stderr.read()}")
    raise AssertionError(f"worker never printed {word}")


class WriteLockHolder:
    """Holds the back end's write lock on the conversation from this process, so a worker that
    tries to store the reply blocks right there."""

    def __init__(self, backend: Backend, conversation_id: str) -> None:
        if backend.kind == "sqlite":
            self.conn: Any = sqlite3.connect(backend.args[1], isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg
            from psycopg import sql

            store: Any = backend.store
            self.conn = psycopg.connect(store.url)
            self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema)))
            self.conn.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,))

    def release(self) -> None:
        self.conn.rollback() if hasattr(self.conn, "rollback") else None
        self.conn.close()


@pytest.mark.parametrize("phase", ["crash-model", "crash-stream", "crash-store", "crash-tool"])
def test_a_turn_killed_at_any_point_loses_nothing_and_continues(backend: Backend, phase: str) -> None:
    session = "c_crash"
    Chat(EchoModel(), store=backend.store, session_id=session).send("before the crash")
    text = f"the message of the {phase} turn"
    proc = backend.worker("--session", session, "--mode", phase, "--text", text,
                          "--key", "k-crash", stdin=phase == "crash-store")
    holder = None
    try:
        wait_for(proc, "READY")
        if phase == "crash-store":
            holder = WriteLockHolder(backend, session)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(0.5)  # the model has answered; the worker now waits to store the reply
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if holder is not None:
            holder.release()
        if proc.poll() is None:  # pragma: no cover - only when an assertion fired first
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # The conversation loads, the user's message is stored, no reply to it was.
    log = backend.store.load(session)
    assert [sm.seq for sm in log] == list(range(1, len(log) + 1))
    assert [sm.message.text for sm in log if sm.role == "user"].count(text) == 1
    mine = next(sm for sm in log if sm.message.text == text)
    if phase == "crash-tool":  # the tool call was stored before the tool ran
        assert [sm.role for sm in log[mine.seq:]] == ["assistant"] and log[-1].message.tool_uses
    else:
        assert log[-1].seq == mine.seq

    # The killed process's turn lock died with it: another device gets it at once.
    with backend.store.lock(session, timeout=5):  # type: ignore[attr-defined]
        pass

    # The client retries the request with the same key: stored once, answered now.
    model = EchoModel()
    retry = Chat(model, store=backend.store, session_id=session).send(text, idempotency_key="k-crash")
    assert retry.text.endswith(f"last user text: {text!r}")
    assert problems(model.last_request.messages) == []
    log = backend.store.load(session)
    assert [sm.message.text for sm in log if sm.role == "user"].count(text) == 1

    # And the conversation simply goes on, every request valid.
    after = Chat(model, store=backend.store, session_id=session).send("after the crash")
    assert after.seq == len(backend.store.load(session))
    assert problems(model.last_request.messages) == []
    assert "before the crash" in model.last_request.messages[0].text


def test_killed_without_a_key_the_message_is_kept_and_merged_into_the_next_turn(tmp_path: Path) -> None:
    b = Backend("sqlite", tmp_path)
    try:
        proc = b.worker("--session", "c_k", "--mode", "crash-model", "--text", "lost?")
        wait_for(proc, "READY")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert [sm.message.text for sm in b.store.load("c_k")] == ["lost?"]
        model = EchoModel()
        Chat(model, store=b.store, session_id="c_k").send("hello again")
        sent = model.last_request.messages
        assert problems(sent) == [] and len(sent) == 1
        assert "lost?" in sent[0].text and "hello again" in sent[0].text
    finally:
        b.store.close()
