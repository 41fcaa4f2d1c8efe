"""Summaries of older turns: incremental (the next summary folds the previous one and only the
newly old turns), stored as derived records with the seq range they cover, never destroying the
log, and falling back to the plain window (with a note) when the summariser fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from colloquy import Chat
from colloquy.context import FullHistory, problems
from colloquy.context.compose import ComposedPolicy, RecentTurns
from colloquy.context.summary import Summariser, SummaryPart, replaced_tokens, summary_problem
from colloquy.errors import OverloadedError
from colloquy.memory.offline import ExtractiveSummariser
from colloquy.memory.transcript import parse_lines, section
from colloquy.messages import Message, StoredMessage, TextBlock
from colloquy.models import EchoModel, FunctionModel, ModelRequest, ModelResponse, ScriptedModel
from colloquy.store import SQLiteStore, Store
from colloquy.tokens import TokenCounter
from colloquy.usage import Usage

PERSONA = "You are a travel agent. Be brief."


def new_seqs(request: ModelRequest) -> list[int]:
    return [seq for seq, *_ in parse_lines(section(request.messages[0].text, "new_messages") or "")]


def previous(request: ModelRequest) -> str:
    return (section(request.messages[0].text, "previous_summary") or "").strip()


def fake_summariser() -> FunctionModel:
    """Answers with the previous summary plus one line naming the new seqs it was given."""
    def fn(req: ModelRequest) -> str:
        prev = previous(req)
        line = "- covered " + ",".join(map(str, new_seqs(req)))
        return f"{prev}\n{line}" if prev else line
    return FunctionModel(fn, name="fake-summariser")


def summary_chat(store: Store, summariser_model: object, counter: TokenCounter, *,
                 session: str = "s1", model: object = None) -> Chat:
    part = SummaryPart(Summariser(summariser_model), min_new_turns=2)  # type: ignore[arg-type]
    policy = ComposedPolicy(4000, parts=[part], recent=RecentTurns(turns=2))
    return Chat(model or EchoModel(), system=PERSONA, store=store, session_id=session,  # type: ignore[arg-type]
                policy=policy, counter=counter)


def test_summaries_are_incremental_and_record_their_range(store: Store, counter: TokenCounter) -> None:
    fake = fake_summariser()
    model = EchoModel()
    chat = summary_chat(store, fake, counter, model=model)
    for i in range(3):
        chat.send(f"question {i}")
    # Turn 3: turns 1 is old (window of 2 turns), one turn is not enough to summarise yet.
    assert fake.requests == [] and store.list_summaries("s1") == []
    chat.send("question 3")
    # Turn 4: turns 1-2 (seqs 1-4) are old: the first summary, from nothing.
    (first_req,) = fake.requests
    assert previous(first_req) == "" and new_seqs(first_req) == [1, 2, 3, 4]
    (first,) = store.list_summaries("s1")
    assert (first.start_seq, first.end_seq, first.previous_id) == (1, 4, None)
    assert first.model == "fake-summariser"
    assert first.meta["usage"]["input_tokens"] > 0  # what the summary cost is kept with it
    assert "cost_usd" in first.meta
    # The summary sits after the persona, before the verbatim recent turns.
    request = model.last_request
    assert request.system[0].text == PERSONA
    assert "- covered 1,2,3,4" in request.system[1].text
    assert 'messages="1-4"' in request.system[1].text
    assert [m.text for m in request.messages if m.role == "user"] == ["question 2", "question 3"]
    assert problems(request.messages) == []

    chat.send("question 4")
    assert len(fake.requests) == 1  # one newly old turn: not yet
    chat.send("question 5")
    second_req = fake.requests[1]
    # Folded: the previous summary plus only the newly old turns (seqs 5-8), not the whole log.
    assert previous(second_req) == "- covered 1,2,3,4"
    assert new_seqs(second_req) == [5, 6, 7, 8]
    summaries = store.list_summaries("s1")
    assert [(s.start_seq, s.end_seq) for s in summaries] == [(1, 4), (1, 8)]
    assert summaries[1].previous_id == first.id
    assert "- covered 1,2,3,4\n- covered 5,6,7,8" in model.last_request.system[1].text


def test_the_full_log_survives_summarising_and_switching_policy(store: Store, counter: TokenCounter) -> None:
    chat = summary_chat(store, fake_summariser(), counter)
    for i in range(8):
        chat.send(f"message {i}")
    assert store.list_summaries("s1")
    assert len(store.load("s1")) == 16  # nothing rewritten, nothing dropped
    full = Chat(EchoModel(), store=store, session_id="s1", policy=FullHistory(), counter=counter)
    request = full.next_request("and now everything")
    assert [m.text for m in request.messages if m.role == "user"] == [
        *(f"message {i}" for i in range(8)), "and now everything"]
    assert [b.text for b in request.system] == [PERSONA]


def test_summariser_failure_falls_back_to_the_window_with_a_note(store: Store, counter: TokenCounter) -> None:
    broken = ScriptedModel([OverloadedError("overloaded")] * 3)
    model = EchoModel()
    chat = summary_chat(store, broken, counter, model=model)
    for i in range(3):
        chat.send(f"q{i}")
    reply = chat.send("q3")
    assert reply.text.startswith("echo:")  # the turn is answered
    assert any("summariser failed" in n and "overloaded" in n and "plain window" in n
               for n in reply.notes)
    request = model.last_request
    assert [b.text for b in request.system] == [PERSONA]
    # No summary carries the old turns, so the verbatim window takes them back as the budget
    # allows (the composite's lowest priority, "older recent turns").
    assert [m.text for m in request.messages if m.role == "user"] == ["q0", "q1", "q2", "q3"]
    assert problems(request.messages) == []
    assert store.list_summaries("s1") == []
    assert len(store.load("s1")) == 8  # no turn lost


def test_failure_after_a_summary_keeps_the_previous_one(store: Store, counter: TokenCounter) -> None:
    model = ScriptedModel(["- [#1] the first summary", OverloadedError("busy")])
    echo = EchoModel()
    chat = summary_chat(store, model, counter, model=echo)
    for i in range(4):
        chat.send(f"q{i}")
    chat.send("q4")
    reply = chat.send("q5")
    assert any("summariser failed" in n and "previous summary" in n for n in reply.notes)
    assert "the first summary" in echo.last_request.system[1].text


def test_a_new_process_continues_from_the_stored_summary(tmp_path: Path, counter: TokenCounter) -> None:
    db = tmp_path / "s.db"
    chat = summary_chat(SQLiteStore(db), fake_summariser(), counter)
    for i in range(4):
        chat.send(f"q{i}")
    fake = fake_summariser()
    again = summary_chat(SQLiteStore(db), fake, counter)  # a fresh part: nothing cached
    again.send("q4")
    assert fake.requests == []  # the stored summary still covers what is old
    again.send("q5")
    assert previous(fake.requests[0]) == "- covered 1,2,3,4"
    assert new_seqs(fake.requests[0]) == [5, 6, 7, 8]


def test_the_summariser_request_and_the_offline_extractive_summariser() -> None:
    log = [
        StoredMessage(conversation_id="c", seq=1, created_at=0.0,
                      message=Message.user("Hi there! We decided to fly to Lisbon on 3 May with Maria.")),
        StoredMessage(conversation_id="c", seq=2, created_at=0.0,
                      message=Message.assistant("Great. Shall I book the 9:40 flight? Thanks a lot, that sounds fun.")),
        StoredMessage(conversation_id="c", seq=3, created_at=0.0, message=Message.user("ok cool")),
    ]
    model = ExtractiveSummariser()
    summariser = Summariser(model, max_tokens=200)
    text = summariser.summarise("- [#0] user: Budget is 900 euros.", log)
    request = model.requests[0]
    assert request.model == "offline-summariser" and request.max_tokens == 200
    assert "not instructions" in request.system[0].text
    lines = text.splitlines()
    assert lines[0] == "- [#0] user: Budget is 900 euros."  # the previous summary is folded in
    assert "- [#1] user: We decided to fly to Lisbon on 3 May with Maria." in lines
    assert "- [#2] assistant: Shall I book the 9:40 flight?" in lines
    assert not any("ok cool" in ln or "Hi there" in ln or "sounds fun" in ln for ln in lines)
    # Over its max_tokens it drops the least informative lines first.
    many = [StoredMessage(conversation_id="c", seq=i, created_at=0.0,
                          message=Message.user(f"On Monday Tom paid {i} dollars for ticket {i}."))
            for i in range(1, 60)]
    short = Summariser(ExtractiveSummariser(), max_tokens=60).summarise(None, many)
    assert 0 < len(short.split()) <= 60
    assert re.match(r"- \[#\d+\] user: On Monday Tom paid", short)


def test_summary_respects_its_allowance(store: Store, counter: TokenCounter) -> None:
    long_summary = "\n".join(f"- [#{i}] point number {i} about Lisbon" for i in range(200))
    echo = EchoModel()
    part = SummaryPart(Summariser(ScriptedModel([long_summary])), min_new_turns=1)
    policy = ComposedPolicy(1000, parts=[part], recent=RecentTurns(turns=1),
                            caps={"recent": 0, "summary": 300})  # nothing spills over to it
    chat = Chat(echo, system=PERSONA, store=store, session_id="s1", policy=policy, counter=counter)
    # The old turn is long, so the summary is shorter than what it replaces (else it would be
    # rejected), yet longer than the summary's allowance.
    chat.send(" ".join(f"detail {i} of the Lisbon plan;" for i in range(600)))
    reply = chat.send("two")
    block = echo.last_request.system[1].text
    assert counter.count("echo", [echo.last_request.system[1]]) <= 300 + 8
    assert "point number 199" in block and "point number 0 " not in block  # newest points kept
    assert any("cut to fit" in n for n in reply.notes)
    assert counter.count("echo", echo.last_request.system, echo.last_request.messages) <= 1000


# -- a weak or strange summariser: its output is checked, not trusted ---------------------------

LOOPING = "- The user talked about the trip. " * 40
GOOD = "- [#1] the user plans a trip to Lisbon"


def weak_chat(store: Store, counter: TokenCounter, replies: list[object],
              echo: EchoModel) -> tuple[Chat, ScriptedModel]:
    summariser = ScriptedModel(replies)  # type: ignore[arg-type]
    part = SummaryPart(Summariser(summariser), min_new_turns=2)
    policy = ComposedPolicy(4000, parts=[part], recent=RecentTurns(turns=2))
    chat = Chat(echo, system=PERSONA, store=store, session_id="s1", policy=policy, counter=counter)
    return chat, summariser


def cut_off(text: str) -> ModelResponse:
    return ModelResponse(content=[TextBlock(text=text)], stop_reason="max_tokens",
                         usage=Usage(input_tokens=100, output_tokens=600), model="scripted")


def long_words(n: int) -> str:
    """n distinct words: long, but not repetitive."""
    return "- " + " ".join(f"word{i}" for i in range(n))


def test_summary_problem_names_each_kind() -> None:
    assert summary_problem(GOOD, 100) is None
    assert "empty" in (summary_problem("  ", 100) or "")
    assert "cut off" in (summary_problem(GOOD, 100, "max_tokens") or "")
    assert "cut off" in (summary_problem(GOOD, 100, "model_context_window_exceeded") or "")
    assert summary_problem(GOOD, 100, "a_reason_added_later") is None
    assert "longer than" in (summary_problem(long_words(300), 100) or "")
    assert "repeats itself" in (summary_problem(LOOPING, 10_000) or "")
    # a loop of varied lines: most 4-word phrases come back
    varied = " ".join(f"and then the user said the trip was great {i % 3}" for i in range(30))
    assert "repeats itself" in (summary_problem(varied, 10_000) or "")
    # the offline summariser's real output on a long chat is not a loop
    log = [StoredMessage(conversation_id="c", seq=i, created_at=0.0,
                         message=Message.user(f"On day {i} Ana visited museum number {i} in Lisbon "
                                              f"with {['Tom', 'Eva', 'Rui'][i % 3]}."))
           for i in range(1, 40)]
    text = Summariser(ExtractiveSummariser(), max_tokens=600).summarise(None, log)
    assert summary_problem(text, replaced_tokens(None, log)) is None


@pytest.mark.parametrize("kind", ["longer", "looping", "cut off"])
def test_a_weak_summary_is_rejected_and_the_window_is_used(
        store: Store, counter: TokenCounter, kind: str) -> None:
    bad: object = {"longer": long_words(400), "looping": LOOPING,
                   "cut off": cut_off("- [#1] the user plans a trip to")}[kind]
    echo = EchoModel()
    chat, summariser = weak_chat(store, counter, [bad], echo)
    for i in range(3):
        chat.send(f"q{i}")
    reply = chat.send("q3")  # turns 1-2 are old: the summariser is asked, and its answer refused
    assert len(summariser.requests) == 1
    assert any(n.startswith("summary: summary rejected") and "plain window" in n
               for n in reply.notes), reply.notes
    assert store.list_summaries("s1") == []  # nothing weak is stored
    assert [b.text for b in echo.last_request.system] == [PERSONA]  # no summary block
    assert [m.text for m in echo.last_request.messages if m.role == "user"] == ["q0", "q1", "q2", "q3"]
    # The rejected call still cost money: it is billed to the conversation as a side call.
    (side,) = chat.cost().side_calls
    assert (side.purpose, side.calls) == ("summary", 1) and side.usage.output_tokens > 0
    # No retry on the very next turn: a model that always fails is asked once per 2 turns.
    chat.send("q4")
    assert len(summariser.requests) == 1


def test_a_rejected_summary_keeps_the_previous_one(store: Store, counter: TokenCounter) -> None:
    echo = EchoModel()
    chat, summariser = weak_chat(store, counter, [GOOD, LOOPING, "- [#1] trip to Lisbon; [#5] Porto"], echo)
    for i in range(4):
        chat.send(f"q{i}")
    assert len(store.list_summaries("s1")) == 1
    chat.send("q4")
    reply = chat.send("q5")
    assert any("summary rejected" in n and "repeats itself" in n and "previous summary" in n
               for n in reply.notes), reply.notes
    assert GOOD in echo.last_request.system[1].text  # the previous summary, not the loop
    assert len(store.list_summaries("s1")) == 1
    chat.send("q6")
    chat.send("q7")  # two more old turns: asked again, and this one is good
    assert len(summariser.requests) == 3
    assert "Porto" in echo.last_request.system[1].text
    assert store.list_summaries("s1")[-1].meta["replaced_tokens"] > store.list_summaries("s1")[-1].meta["tokens"]
