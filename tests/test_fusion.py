"""Recall that reads more than words: the dates messages were said and point to, who said them,
what sits next to a match, and what only the embeddings find."""

from __future__ import annotations

from datetime import datetime, timezone

from colloquy.context import ContextInput
from colloquy.context.dates import (MAX_SCAN_CHARS, absolute_tokens, day_tokens, message_date_tokens,
                                    query_date_tokens, relative_tokens)
from colloquy.context.fusion import FusionWeights, fused_features, rank_by
from colloquy.context.recall import BM25Retriever, RecallPart, RecallPolicy, context_seqs
from colloquy.messages import Message, StoredMessage


def ts(y: int, m: int, d: int, h: int = 13) -> float:
    return datetime(y, m, d, h, tzinfo=timezone.utc).timestamp()


FILLER = ["How was your weekend? Quiet, I read a novel about sailors.",
          "Any plans for the evening? Cooking pasta and watching a film.",
          "Did you see the match? It went to extra time, very tense.",
          "The weather is grey again, but the garden needs the rain."]


def dated_log(said: list[tuple[float, str, str]], cid: str = "c") -> list[StoredMessage]:
    """(time, speaker, text) per message; roles alternate user/assistant; ``meta["speaker"]``."""
    return [StoredMessage(conversation_id=cid, seq=i, created_at=t,
                          message=Message(role="user" if i % 2 else "assistant", content=text),
                          meta={"speaker": who} if who else {})
            for i, (t, who, text) in enumerate(said, start=1)]


def sessions(days: list[tuple[int, int, int]], per_day: int = 12) -> list[tuple[float, str, str]]:
    out = []
    for n, (y, m, d) in enumerate(days):
        for j in range(per_day):
            out.append((ts(y, m, d) + 30 * j, "", f"{FILLER[(n + j) % 4]} [{n}.{j}]"))
    return out


def recalled(history: list[StoredMessage], question: str, part: RecallPart, budget: int = 900,
             asked: float | None = None) -> set[int]:
    last = history[-1]
    q = StoredMessage(conversation_id=last.conversation_id, seq=last.seq + 1,
                      created_at=asked or last.created_at + 60, message=Message.user(question))
    ctx = RecallPolicy(budget, recall_share=0.9, part=part).build(
        ContextInput(history=[*history, q], conversation_id=last.conversation_id))
    return context_seqs(ctx)


def test_date_tokens_of_messages_and_questions() -> None:
    said = ts(2023, 12, 5)  # a Tuesday
    assert relative_tokens("I went to a support group yesterday", said)[:1] == ["d20231204"]
    assert "d20231202" in relative_tokens("last Saturday was fun", said)
    assert set(day_tokens(datetime(2023, 11, 27).date())) <= set(relative_tokens("last week", said))
    assert "m202311" in relative_tokens("last month", said) and "y2022" in relative_tokens("last year", said)
    assert "d20231121" in relative_tokens("two weeks ago", said)
    assert absolute_tokens("What did Tim say on 16 November, 2023?")[:2] == ["md1116", "d20231116"]
    assert "md1201" in absolute_tokens("the forest picture shared on December 1,2023")
    assert "y2022" in absolute_tokens("What did she read in 2022?")
    assert absolute_tokens("you may go") == []  # "may" the verb is not May
    assert query_date_tokens("What did I do yesterday?", said)[:1] == ["d20231204"]


def test_a_pasted_document_is_scanned_for_dates_up_to_a_bound() -> None:
    # A 1.2 MB paste took 9 s to scan (minutes when it held many dates, each match checked against
    # all earlier ones), in every turn that indexed it. Dates early in a long text still count.
    said = ts(2023, 12, 5)
    head = "We met on 4 December 2023 and yesterday we talked. "
    many_dates = " ".join(f"On {d} March 2021 it rained." for d in range(1, 29)) + " "
    long = head + many_dates * (2 * MAX_SCAN_CHARS // len(many_dates)) + "and on 9 June 2020 too"
    tokens = message_date_tokens(long, said)
    assert {"d20231204", "md0301", "md0328"} <= set(tokens)  # the start, yesterday resolved
    assert "md0609" not in tokens  # past the bound: not read
    assert query_date_tokens(long, said) == query_date_tokens(long[:MAX_SCAN_CHARS], said)


def said_on(day: tuple[int, int, int], offset: int, text: str, before: int,
            after: int) -> tuple[list[StoredMessage], int]:
    """Sessions every few days around ``day`` (``before`` of them first, ``after`` later), with
    ``text`` as the ``offset``-th message of that day's session; the log and that message's seq."""
    start = datetime(*day, tzinfo=timezone.utc).timestamp()
    days = [tuple(datetime.fromtimestamp(start - 86400 * 3 * k, tz=timezone.utc).timetuple()[:3])
            for k in range(before, 0, -1)]
    days += [day] + [tuple(datetime.fromtimestamp(start + 86400 * 3 * k, tz=timezone.utc).timetuple()[:3])
                     for k in range(1, after + 1)]
    said = sessions(days)  # type: ignore[arg-type]
    first = next(i for i, (t, _, _) in enumerate(said) if t >= ts(*day))
    said[first + offset] = (said[first + offset][0], "", text)
    return dated_log(said), first + offset + 1


def test_yesterday_is_found_by_the_day_it_points_to() -> None:
    history, seq = said_on((2023, 12, 5), 2, "I finally went to my first class yesterday!", 9, 8)
    question = "What did I do on 4 December?"
    # Fused recall resolves "yesterday" against the message's own date (5 December).
    assert seq in recalled(history, question, RecallPart("bm25"))
    # Words alone cannot: the message says neither "4" nor "December".
    assert seq not in recalled(history, question, RecallPart(lambda: BM25Retriever(), neighbour_min=0.0))


def test_a_question_naming_a_day_finds_what_was_said_that_day() -> None:
    history, seq = said_on((2023, 11, 16), 4, "My knee hurts after the long run, I need rest.", 14, 6)
    assert seq in recalled(history, "What did Tim say about his injury on 16 November, 2023?",
                           RecallPart("bm25"))


def test_the_speaker_a_question_names_comes_first() -> None:
    said: list[tuple[float, str, str]] = []
    for i in range(60):
        who = "Caroline" if i % 2 == 0 else "Melanie"
        said.append((ts(2023, 5, 1 + i // 12) + 30 * i, who, f"{FILLER[i % 4]} ({i})"))
    said[10] = (said[10][0], "Caroline", "I painted a lake at sunset last week, all in blue.")
    said[31] = (said[31][0], "Melanie", "I painted a sunrise over the lake, lots of orange.")
    history = dated_log(said)
    part = RecallPart("bm25")
    idx = part.index_for(ContextInput(history=history, conversation_id="c"))
    idx.update(history, len(history))

    def ranked(question: str) -> list[int]:
        return [k for k, _ in part.rank(idx, question, None, None)]

    # Both said "painted"; the one the question names comes first.
    melanie, caroline = ranked("What did Melanie paint?"), ranked("What did Caroline paint?")
    assert melanie.index(32) < melanie.index(11)  # seqs are 1-based
    assert caroline.index(11) < caroline.index(32)
    assert 32 in recalled(history, "What did Melanie paint?", RecallPart("bm25"), budget=150)


def test_a_unit_only_the_embeddings_find_is_a_candidate_past_the_keyword_hits() -> None:
    # 400 messages share the question's words (more than the 300 keyword candidates); the one
    # that answers it shares none of them.
    said = [(ts(2023, 1, 1) + 60 * i, "", f"I bring my lunch home from the office, day {i}.")
            for i in range(400)]
    said.insert(200, (ts(2023, 1, 1) + 60 * 200 + 30, "", "We adopted a tabby kitten from the shelter."))
    history = dated_log(said)
    part = RecallPart("hybrid")
    last = history[-1]
    q = StoredMessage(conversation_id="c", seq=last.seq + 1, created_at=last.created_at + 60,
                      message=Message.user("Which pet did I bring home?"))
    idx = part.index_for(ContextInput(history=[*history, q], conversation_id="c"))
    idx.update([*history, q], len(history))
    keys, rows = fused_features(idx, idx.retriever, q.message.text, q.created_at, q.seq)
    kitten = 201
    assert kitten in keys  # a candidate although BM25 never matched it
    by_dense = rank_by(keys, rows, FusionWeights(body=0, context=0, dates=0, speaker=0,
                                                 neighbour_text=0, neighbour_dense=0, session=0))
    assert by_dense[0][0] == kitten


def test_a_long_index_asks_only_its_rarest_terms() -> None:
    # Every posting list a query names is read: in a long log, common words touch every unit
    # (70 ms per question at 20,000 LoCoMo units). Past exact_units, the rarest terms are kept.
    from colloquy.context.retrieval import query_terms

    items = [(i, f"weekly meeting notes, item {i}", "") for i in range(1, 101)]
    question = "What about the weekly meeting with Biscuit?"
    long = BM25Retriever(exact_units=50, max_postings=20)
    long.add([*items, (101, "my kitten Biscuit slept through the weekly meeting", "")])
    assert long.affordable(query_terms(question)) == ["biscuit"]
    assert long.columns(question, 5)[0][0] == 101
    short = BM25Retriever(exact_units=1000, max_postings=20)  # under exact_units: every term
    short.add([*items, (101, "my kitten Biscuit slept through the weekly meeting", "")])
    assert short.affordable(query_terms(question)) == ["weekly", "meeting", "biscuit"]
    assert short.columns(question, 5)[0][0] == 101


def test_a_query_ranks_a_bounded_number_of_units_whatever_the_log() -> None:
    # A small vocabulary or a very long log: even a query's rarest term is in thousands of
    # units, and ranking them all made a turn's time grow with the log (bench/turns.py). The
    # query ranks only the newest max_postings units that match it.
    r = BM25Retriever(max_postings=50)
    r.add([(i, f"release notes for the build, entry {i}", "", "") for i in range(1, 3001)])
    rows = r.columns("release build", 10**6)
    assert len(rows) == 50
    assert {k for k, *_ in rows} == set(range(2951, 3001))
    older = r.columns("release build", 10**6, before=1001)  # below the window: its newest 50
    assert {k for k, *_ in older} == set(range(951, 1001))
    # A rare term is still found wherever it is.
    r.add([(3001, "the build broke", "", "")])
    assert r.columns("release build broke", 3)[0][0] == 3001


def test_columns_and_rows_rank_alike() -> None:
    from colloquy.context.fusion import FIELDS, fused_columns, rank_columns

    said = sessions([(2023, 5, 7), (2023, 5, 8), (2023, 5, 9)])
    said[14] = (said[14][0], "", "I adopted a tabby kitten and named her Biscuit.")
    history = dated_log(said)
    part = RecallPart("bm25")
    idx = part.index_for(ContextInput(history=history, conversation_id="rank"))
    idx.update(history, len(history))
    q = "What did I name the kitten I adopted?"
    keys, cols = fused_columns(idx, idx.retriever, q, history[-1].created_at, None)
    assert len(cols) == len(FIELDS) and all(len(c) == len(keys) for c in cols)
    keys2, rows = fused_features(idx, idx.retriever, q, history[-1].created_at, None)
    assert keys2 == keys and rows == [list(r) for r in zip(*cols)]
    w = FusionWeights()
    assert rank_by(keys, rows, w) == rank_columns(keys, cols, w)
    assert rank_columns(keys, cols, w)[0][0] == history[14].seq
