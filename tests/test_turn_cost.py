"""What keeps a turn's engine time flat in the conversation's length: the engine's per-turn
filters work incrementally over its own log list and give what a scan of the whole log gives;
a long log leaves the garbage collector's full walks. (The time itself is measured by
bench/turns.py, never by a timed test.)"""

from __future__ import annotations

import gc
import weakref
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from colloquy import Chat, gc_freeze
from colloquy.context.thinking import FinishedTurns, finished_turns_without_thinking
from colloquy.messages import (
    Message,
    RedactedThinkingBlock,
    StoredMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from colloquy.models.offline import EchoModel
from colloquy.store import NewMessage, SQLiteStore


def _message(rng: random.Random, i: int) -> Message:
    kind = rng.choice(["user", "reply", "thinking", "only-thinking", "redacted", "tool", "result"])
    if kind == "user":
        return Message.user(f"question {i}")
    if kind == "reply":
        return Message.assistant(f"answer {i}")
    if kind == "thinking":
        return Message(role="assistant", content=[ThinkingBlock(thinking=f"hm {i}", signature="s"),
                                                  TextBlock(text=f"answer {i}")])
    if kind == "only-thinking":  # a reply cut off while thinking: left out entirely
        return Message(role="assistant", content=[ThinkingBlock(thinking=f"hm {i}", signature="s")])
    if kind == "redacted":
        return Message(role="assistant", content=[RedactedThinkingBlock(data="x"),
                                                  ToolUseBlock(id=f"t{i}", name="f", input={})])
    if kind == "tool":
        return Message(role="assistant", content=[ToolUseBlock(id=f"t{i}", name="f", input={})])
    return Message(role="user", content=[ToolResultBlock(tool_use_id=f"t{i}", content="r")])


def _without_thinking(history: list[StoredMessage]) -> list[list[dict[str, object]]]:
    return [sm.message.to_anthropic()["content"] for sm in history]


def test_finished_turns_kept_over_a_growing_log_equal_a_scan_of_the_whole_log() -> None:
    rng = random.Random(3)
    log: list[StoredMessage] = []
    finished = FinishedTurns()
    for i in range(1, 400):
        log.append(StoredMessage(conversation_id="c", seq=i, message=_message(rng, i)))
        got = finished(log)
        want = finished_turns_without_thinking(list(log))  # a new list: scanned whole
        assert [sm.seq for sm in got] == [sm.seq for sm in want]
        assert _without_thinking(list(got)) == _without_thinking(want)
        # The current turn keeps its thinking (its tool loop goes back unmodified).
        start = max((j for j, sm in enumerate(log) if sm.message.starts_turn), default=0)
        assert list(got)[len(got) - (len(log) - start):] == log[start:]
    # Another list (a log reloaded after a rewrite) is scanned whole, not spliced onto the old.
    shorter = log[:50]
    assert [sm.seq for sm in finished(shorter)] == [
        sm.seq for sm in finished_turns_without_thinking(shorter)]


def test_a_log_without_thinking_is_handed_on_as_it_is() -> None:
    """No copy of a 10,000-message log per turn when there is nothing to leave out."""
    log = [StoredMessage(conversation_id="c", seq=i,
                         message=Message.user("q") if i % 2 else Message.assistant("a"))
           for i in range(1, 10_001)]
    finished = FinishedTurns()
    assert finished(log) is log
    log.append(StoredMessage(conversation_id="c", seq=10_001, message=Message.user("q")))
    assert finished(log) is log


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_resumed_long_log_leaves_the_collectors_walks_and_is_still_freed(
        unfrozen: None, tmp_path: Path) -> None:
    """A Chat that loads a log of FREEZE_EVERY messages or more freezes it (full collections
    walk it no more: it is not among gc.get_objects()); dropped, it is freed all the same."""
    store = SQLiteStore(tmp_path / "long.db")
    store.create_conversation(id="long")
    n = gc_freeze.FREEZE_EVERY
    store.append("long", [NewMessage(message=Message.user(f"message {i}")) for i in range(n)])
    chat = Chat(EchoModel(keep_requests=0), store=store, session_id="long")
    log = chat.history()
    assert len(log) == n and gc.get_freeze_count() > 0
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(sm) in tracked for sm in log)
    frozen = gc.get_freeze_count()
    del chat, log
    assert gc.get_freeze_count() < frozen - n, "the log was freed by reference counting"
    store.close()


class _TurnState:
    """What a failed or cancelled request leaves: a reference cycle holding a buffer."""

    def __init__(self) -> None:
        self.me = self
        self.body = bytearray(1_000_000)


def _turns_until_a_freeze(chat: Chat) -> None:
    frozen = gc.get_freeze_count()
    gc_freeze._pending = gc_freeze.FREEZE_EVERY - 1  # one message short of a freeze
    chat.send("hi")
    assert gc.get_freeze_count() != frozen


def test_garbage_frozen_with_the_live_objects_is_collected_within_reclaim_every_freezes(
        unfrozen: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """attack7 F3: a freeze collects the young generations only, so a cycle that had reached the
    oldest generation (a turn's state that lived through a long model call) and died just
    before the freeze, and a cycle alive at a freeze (a turn in flight) that died after it, were
    frozen with the live objects and never freed: each freeze kept its garbage for good. Now
    every RECLAIM_EVERY freezes everything is collected once."""
    from colloquy import MemoryStore

    monkeypatch.setattr(gc_freeze, "RECLAIM_EVERY", 3, raising=False)
    monkeypatch.setattr(gc_freeze, "_freezes", 0, raising=False)
    chat = Chat(EchoModel(keep_requests=0), store=MemoryStore())
    old = _TurnState()
    gc.collect()  # it reaches the oldest generation, then dies just before a freeze
    dead_before = weakref.ref(old)
    del old
    _turns_until_a_freeze(chat)  # freeze 1
    in_flight = _TurnState()
    died_frozen = weakref.ref(in_flight)
    _turns_until_a_freeze(chat)  # freeze 2: alive then, dead after it
    del in_flight
    gc.collect()
    # Frozen: the price of skipping full walks, for a while.
    assert dead_before() is not None and died_frozen() is not None
    _turns_until_a_freeze(chat)  # freeze 3: everything is collected first
    assert dead_before() is None and died_frozen() is None, "frozen garbage kept for good"
