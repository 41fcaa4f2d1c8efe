"""The offline models' record of requests: bounded (``colloquy serve --model echo`` runs for
hours) and forgetting deleted conversations (a deleted user leaves no trace in the process)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from colloquy import Chat, EchoModel, FunctionModel, ScriptedModel
from colloquy.messages import Message
from colloquy.models import ModelRequest
from colloquy.models.offline import KEEP_REQUESTS, _RecordingModel
from colloquy.store import MemoryStore, Store


def ask(text: str) -> ModelRequest:
    return ModelRequest(model="x", messages=[Message.user(text)])


@pytest.mark.parametrize("make", [
    lambda keep: EchoModel(keep_requests=keep),
    lambda keep: ScriptedModel(["ok"] * 50, keep_requests=keep),
    lambda keep: FunctionModel(lambda r: "ok", keep_requests=keep),
], ids=["echo", "scripted", "function"])
def test_the_record_keeps_only_the_latest_requests(make: Callable[[int], _RecordingModel]) -> None:
    model = make(3)
    for i in range(10):
        model.request(ask(f"q{i}"))
    assert [r.messages[0].text for r in model.requests] == ["q7", "q8", "q9"]
    assert model.last_request.messages[0].text == "q9"
    none = make(0)
    none.request(ask("q"))
    assert none.requests == []


def test_the_default_record_is_bounded_in_a_served_echo_model() -> None:
    model = EchoModel.from_spec("echo?latency=0")  # as `colloquy serve --model echo` builds it
    for i in range(KEEP_REQUESTS + 20):
        model.request(ask(f"q{i}"))
    assert len(model.requests) == KEEP_REQUESTS
    assert model.requests[0].messages[0].text == "q20"
    model.clear_requests()
    assert model.requests == []
    with pytest.raises(ValueError):
        EchoModel(keep_requests=-1)


def test_deleting_a_conversation_drops_its_requests_only(store: Store) -> None:
    model = EchoModel()
    for session in ("keep-me", "drop-me"):
        Chat(model, store=store, session_id=session).send(f"hello from {session}")
    model.request(ask("made outside any conversation"))
    assert len(model.requests) == 3
    store.delete_conversation("drop-me")
    texts = [r.messages[-1].text for r in model.requests]
    assert texts == ["hello from keep-me"], "the deleted one's and the unattributable ones go"


def test_an_async_turn_is_recorded_with_its_conversation() -> None:
    import asyncio

    store = MemoryStore()
    model = EchoModel()
    chat = Chat(model, store=store, session_id="a1")
    asyncio.run(chat.asend("async hello"))
    Chat(model, store=store, session_id="a2").send("sync hello")
    store.delete_conversation("a1")
    assert [r.messages[-1].text for r in model.requests] == ["sync hello"]


def test_the_offline_memory_models_keep_the_same_bounded_forgetting_record() -> None:
    """The offline summariser and fact extractor (colloquy.memory.offline) are read by a
    summary or memory policy in ``serve --model echo --policy memory``: the same record."""
    from colloquy import make_policy
    from colloquy.memory.offline import ExtractiveSummariser, RuleFactExtractor

    bounded = RuleFactExtractor(keep_requests=2)
    for i in range(5):
        bounded.request(ask(f"q{i}"))
    assert [r.messages[0].text for r in bounded.requests] == ["q3", "q4"]
    summariser = ExtractiveSummariser()
    store = MemoryStore()
    for session in ("keep-me", "drop-me"):
        policy = make_policy("summary", max_input_tokens=300, chat_model="echo",
                             config={"summary": {"model": summariser, "min_new_turns": 1}})
        chat = Chat(EchoModel(), store=store, session_id=session, policy=policy,
                    title_model=False)
        for i in range(4):
            chat.send(f"{session} turn {i}: Ana booked Lisbon for May " + "and more words " * 8)
    assert {session for session in ("keep-me", "drop-me")
            if any(session in r.messages[0].text for r in summariser.requests)} == {
        "keep-me", "drop-me"}
    store.delete_conversation("drop-me")
    assert summariser.requests and not any("drop-me" in r.messages[0].text
                                           for r in summariser.requests)
