"""Edits and regenerations on the append-only log (colloquy.branches), and the record of what the
model saw for each reply (colloquy.context.seen): through the library, on every store kind, with
every named context policy."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from colloquy import (
    Chat,
    EchoModel,
    FunctionModel,
    MemoryStore,
    Message,
    NoContextRecord,
    NothingToRevise,
    ScriptedModel,
    SQLiteStore,
    Store,
    tool_call,
)
from colloquy.context.presets import POLICY_NAMES, preset
from colloquy.context.default import DefaultPolicy
from colloquy.context.seen import encode, expand, ranges, spans
from colloquy.errors import ModelError
from colloquy.store import NewMessage


def _texts(chat: Chat) -> list[tuple[int, str, str]]:
    return [(sm.seq, sm.role, sm.message.text) for sm in chat.history()]


def test_regenerate_and_edit_append_and_mark_never_rewrite(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, system="Be brief.", session_id="c_branch")
    chat.send("first question")
    chat.send("my code word is SECRET-A")
    before = [sm.model_dump() for sm in chat.history()]
    again = chat.regenerate()
    edited = chat.edit_last("my code word is REPLACED")
    log = chat.history()
    # Nothing stored was touched: the first four rows are byte for byte what they were.
    assert [sm.model_dump() for sm in log[:4]] == before
    assert [(sm.seq, sm.role) for sm in log] == [(i, r) for i, r in zip(range(1, 9), ["user", "assistant"] * 4)]
    assert log[4].message.text == "my code word is SECRET-A"  # regenerate resends the message
    assert log[4].meta["supersedes"] == [3, 4] and log[4].meta["revision"] == "regenerate"
    assert log[6].meta["supersedes"] == [5, 6] and log[6].meta["revision"] == "edit"
    assert again.seq == 6 and edited.seq == 8
    # The current branch: the first turn and the edited one.
    assert [sm.seq for sm in chat.current_branch()] == [1, 2, 7, 8]
    sent = chat.model.last_request  # type: ignore[attr-defined]
    assert [m.text for m in sent.messages][-1] == "my code word is REPLACED"
    assert "SECRET-A" not in json.dumps(sent.model_dump(mode="json"))
    # A new process sees the same branch from the store alone.
    fresh = Chat(EchoModel(), store=store, session_id="c_branch")
    fresh.send("and now?")
    assert "SECRET-A" not in json.dumps(fresh.model.last_request.model_dump(mode="json"))  # type: ignore[attr-defined]


def test_edit_and_regenerate_take_a_thinking_budget_for_their_turn_only(store: Store) -> None:
    # Chat.send's per-turn thinking (TurnOptions), on the two revisions too
    chat = Chat(EchoModel(), store=store, session_id="c_think", max_tokens=500)
    chat.send("a hard question")

    def sent() -> Any:
        return chat.model.last_request  # type: ignore[attr-defined]

    assert sent().thinking is None
    chat.regenerate(thinking=2048)
    assert (sent().thinking, sent().max_tokens) == (2048, 2548)
    chat.edit_last("a harder question", thinking=4096, max_tokens=100)
    assert (sent().thinking, sent().max_tokens) == (4096, 4196)
    chat.regenerate()  # the chat's own setting again: none
    assert sent().thinking is None
    rows = len(chat.history())
    with pytest.raises(ValueError, match="at least 1024"):
        chat.regenerate(thinking=100)
    with pytest.raises(ValueError, match="at least 1024"):
        chat.edit_last("x", thinking=5)
    assert len(chat.history()) == rows, "a refused budget stores nothing"


def test_nothing_to_revise_creates_nothing(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="c_empty")
    with pytest.raises(NothingToRevise):
        chat.regenerate()
    with pytest.raises(NothingToRevise):
        chat.edit_last("hello")
    assert store.find_conversation("c_empty") is None
    with pytest.raises(ValueError):
        chat.send(None)  # only regenerate reuses a message


def test_regenerate_after_a_failed_call_supersedes_the_unanswered_message(store: Store) -> None:
    answers: list[Any] = [ConnectionError("provider down"), "at last"]

    def flaky(request: Any) -> str:
        step = answers.pop(0)
        if isinstance(step, Exception):
            raise step
        return str(step)

    chat = Chat(FunctionModel(flaky), store=store, session_id="c_fail")
    with pytest.raises(ModelError):
        chat.send("where is my parcel?")
    reply = chat.regenerate()
    assert reply.text == "at last"
    assert _texts(chat) == [(1, "user", "where is my parcel?"), (2, "user", "where is my parcel?"),
                            (3, "assistant", "at last")]
    assert chat.history()[1].meta["supersedes"] == [1]
    assert [sm.seq for sm in chat.current_branch()] == [2, 3]


def test_a_turn_with_tool_calls_is_superseded_whole(store: Store) -> None:
    def lookup(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}"

    model = ScriptedModel([tool_call("lookup", {"city": "Lisbon"}), "It is sunny.", "Rainy now."])
    chat = Chat(model, store=store, tools=[lookup], session_id="c_tools")
    chat.send("weather in Lisbon?")
    assert len(chat.history()) == 4  # user, tool_use, tool_result, answer
    chat.regenerate()
    log = chat.history()
    assert log[4].meta["supersedes"] == [1, 2, 3, 4]
    assert [sm.seq for sm in chat.current_branch()] == [5, 6]
    # The request carried no orphaned tool exchange of the superseded turn.
    assert [m.role for m in model.last_request.messages] == ["user"]


def test_a_blocked_turn_can_be_edited(store: Store) -> None:
    def no_secrets(text: str, ctx: Any) -> Any:
        from colloquy import Verdict
        return Verdict.block("not that", reason="secret") if "secret" in text else None

    chat = Chat(EchoModel(), store=store, guards=[no_secrets], session_id="c_blocked")
    assert chat.send("tell me the secret").blocked
    reply = chat.edit_last("tell me a joke")
    assert not reply.blocked
    assert chat.history()[2].meta["supersedes"] == [1, 2]
    assert [sm.message.text for sm in chat.current_branch()][0] == "tell me a joke"


def test_a_retried_regenerate_is_answered_once(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, session_id="c_key")
    chat.send("hello")
    first = chat.regenerate(idempotency_key="regen-1")
    again = chat.regenerate(idempotency_key="regen-1")
    assert again.seq == first.seq and any(n.startswith("replayed") for n in again.notes)
    assert len(chat.history()) == 4


@pytest.mark.parametrize("policy_name", [*POLICY_NAMES, "memory+cache"])
def test_every_policy_replays_only_the_current_branch(store: Store, policy_name: str) -> None:
    """A turn replaced long ago must reach no model again: not verbatim, not in a summary, not
    as a recalled excerpt, not through fact extraction."""
    name, _, cache = policy_name.partition("+")
    policy = preset(name, max_input_tokens=700, **({"cache": {"enabled": True}} if cache else {}))
    model = EchoModel()
    chat = Chat(model, store=store, policy=policy, user_id="ada", session_id=f"c_{name}",
                extract_facts=None)
    chat.send("hello, I plan a trip to Lisbon in May")
    chat.send("my code word is SECRET-A, remember the code word")
    chat.edit_last("my code word is REPLACED, remember the code word")
    chat.regenerate()
    for i in range(14):
        chat.send(f"question {i} about the trip: trains, hotels and the code word, item {i}")
    chat.send("what was my code word?")
    after_edit = model.requests[2:]
    assert after_edit
    for request in after_edit:
        assert "SECRET-A" not in json.dumps(request.model_dump(mode="json")), policy_name
    summaries = store.list_summaries(chat.session_id) if hasattr(store, "list_summaries") else []
    assert all("SECRET-A" not in s.text for s in summaries)
    if name in ("summary", "memory"):
        assert summaries, "the budget is small enough that older turns are summarised"


def test_fact_extraction_reads_only_the_current_branch(store: Store) -> None:
    from colloquy import FactExtraction, FactExtractor

    chat = Chat(EchoModel(), store=store, user_id="ada", session_id="c_facts",
                extract_facts=FactExtraction(FactExtractor("offline-facts"), every=3))
    chat.send("hello there")
    chat.send("I like sushi")
    chat.edit_last("I like pizza")
    chat.send("thanks")
    statements = " ".join(f.statement for f in store.list_facts("ada", include_retired=True))
    assert "pizza" in statements and "sushi" not in statements


# -- what the model saw ---------------------------------------------------------------------------


def test_ranges_round_trip() -> None:
    assert ranges([7, 1, 2, 3, 9, 8, 12]) == [[1, 3], [7, 9], [12, 12]]
    assert expand(ranges([5, 6, 10])) == [5, 6, 10]
    assert ranges([]) == []
    # Stored as one string, each range from the end of the one before (``"v": 2``).
    assert encode([[1, 14], [17, 20], [25, 25]]) == "1+13,3+3,5" and encode([]) == ""
    assert spans("1+13,3+3,5") == [[1, 14], [17, 20], [25, 25]] and spans("") == []
    assert expand("20001+1,7") == [20001, 20002, 20009]
    # The lists stored before (``"v": 1``) read the same; a piece that does not parse is skipped.
    assert spans([[1, 14], [17, 20]]) == [[1, 14], [17, 20]] == spans("1+13,x,3+3")
    assert spans(None) == spans({"a": 1}) == spans([["a", 2], 5]) == []


def test_each_reply_keeps_what_its_call_was_sent(store: Store) -> None:
    from colloquy.memory.records import Fact

    store.create_conversation(id="c_seen", user_id="ada", persona="You are a travel agent.")
    kept_fact = store.add_fact(Fact(user_id="ada", subject="travel", statement="prefers trains"))
    gone_fact = store.add_fact(Fact(user_id="ada", subject="food", statement="is vegetarian"))
    chat = Chat(EchoModel(), store=store, user_id="ada", session_id="c_seen",
                policy=preset("memory", max_input_tokens=900))
    for i in range(16):
        chat.send(f"turn {i}: trains from Lisbon to Porto, hotels near the station {i}")
    reply = chat.send("which trains did we talk about?")
    seen = chat.context_seen(reply.seq)
    names = {p.name for p in seen.parts}
    assert {"facts", "summary"} <= names
    facts = next(p for p in seen.parts if p.name == "facts")
    assert {f.statement for f in facts.facts} == {"prefers trains", "is vegetarian"}
    summary = next(p for p in seen.parts if p.name == "summary")
    assert summary.summary and summary.seqs
    # The verbatim messages are exactly those of the request, in order.
    sent = chat.model.last_request  # type: ignore[attr-defined]
    assert [m.seq for m in seen.messages][-1] == reply.seq - 1
    assert len(seen.messages) == len(sent.messages)
    assert seen.persona == "You are a travel agent." and seen.persona_unchanged
    total = seen.persona_tokens + sum(p.tokens for p in seen.parts) + seen.messages_tokens
    assert total == seen.estimated_input_tokens
    assert seen.usage is not None and seen.cost is not None
    assert seen.cost.input_tokens == seen.usage.input_tokens and seen.cost.output_usd == 0.0
    # Later changes: a fact forgotten, the persona changed, more turns. The record still shows
    # that reply's context; the forgotten fact's text is not brought back.
    store.forget_facts("ada", [gone_fact.id])
    later = Chat(EchoModel(), store=store, user_id="ada", session_id="c_seen",
                 system="You are terse.", policy=preset("memory", max_input_tokens=900))
    later.send("one more")
    again = later.context_seen(reply.seq)
    facts = next(p for p in again.parts if p.name == "facts")
    assert [(f.statement, f.held) for f in facts.facts if f.id == gone_fact.id] == [(None, False)]
    assert [f.statement for f in facts.facts if f.id == kept_fact.id] == ["prefers trains"]
    assert not again.persona_unchanged
    assert [m.seq for m in again.messages] == [m.seq for m in seen.messages]
    with pytest.raises(NoContextRecord):
        later.context_seen(1)  # a user message


def test_the_record_is_small_and_does_not_grow_with_the_log(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "size.db")
    chat = Chat(EchoModel(), store=store, session_id="c_size")
    sizes = []
    for i in range(60):
        chat.send(f"message number {i} with some words in it")
        sizes.append(len(json.dumps(chat.history()[-1].meta["context"])))
    assert max(sizes) < 300 and sizes[-1] <= sizes[25] + 4  # + digits of the seqs
    store.close()


_TOPICS = [t.split() for t in (
    "rust borrow checker lifetimes cargo", "garden tomatoes compost seedlings",
    "flight lisbon airport luggage", "database index migration postgres",
    "sourdough bread starter oven", "marathon training knee physio",
    "mortgage rate landlord contract", "piano chopin nocturne pedal",
    "thesis chapter supervisor deadline", "release freeze laptop deploy",
    "invoice budget accountant taxes", "holiday recipe paella saffron")]


def _questions(n: int) -> list[str]:
    """Questions on a dozen topics in turn at random: recall finds each topic's earlier turns."""
    rng = random.Random(7)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) + f" question {i}?"
            for i in range(n) for words in [rng.choice(_TOPICS)]]


def test_a_long_conversations_record_is_as_small_as_a_short_ones() -> None:
    """With recall, a reply lists the seq ranges of the excerpts recalled: their count follows the
    budget, and each costs a few characters whatever the seqs (distances, not seqs, are stored), so
    a reply at turn 5,060 stores about what a reply at turn 60 does (v1 lists: 305-354 bytes
    against 271-316)."""
    sizes: dict[int, list[int]] = {}
    for earlier in (0, 5_000):  # turns before these (no word in common with the questions)
        store = MemoryStore()
        if earlier:
            store.create_conversation(id="c_long")
            say = (Message.user, Message.assistant)
            store.append("c_long", [NewMessage(message=say[j % 2](f"zq{j % 7} wv{j % 5}"))
                                    for j in range(2 * earlier)])
        chat = Chat(EchoModel(), store=store, session_id="c_long",
                    policy=DefaultPolicy(1500, retriever="bm25"))
        records = []
        for text in _questions(60):
            chat.send(text)
            records.append(chat.history()[-1].meta["context"])
        recalled = [spans(r["parts"]["recall"]["seqs"]) for r in records[-15:]]
        assert sum(map(len, recalled)) >= 5 * 15  # recall at work: several excerpts a reply
        sizes[earlier] = [len(json.dumps(r)) for r in records[-15:]]
        seen = chat.context_seen(chat.history()[-1].seq)
        (part,) = [p for p in seen.parts if p.name == "recall"]
        assert [m.seq for m in part.messages] == expand(records[-1]["parts"]["recall"]["seqs"])
    # Only the first range of each list is written in full: a digit or two more, no more.
    assert max(sizes[5_000]) <= 250 and sum(sizes[5_000]) <= sum(sizes[0]) + 8 * 15, sizes


def test_memory_store_and_sqlite_give_the_same_record(tmp_path: Path) -> None:
    records = []
    for store in (MemoryStore(), SQLiteStore(tmp_path / "same.db")):
        chat = Chat(EchoModel(), store=store, session_id="c_same", system="hi")
        for text in ("a", "b", "c"):
            chat.send(text)
        chat.regenerate()
        records.append(chat.history()[-1].meta["context"])
        store.close()
    assert records[0] == records[1]
    assert records[0]["kept"] == "1+3,3" == encode([[1, 4], [7, 7]])
