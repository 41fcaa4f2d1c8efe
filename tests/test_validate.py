"""The API's conversation rules (problems/validate) and the request repair that keeps a stored
log sendable after crashes and failed calls."""

from __future__ import annotations

import random
import threading

import pytest
from conftest import stored

from colloquy.context import FullHistory, RollingWindow, TokenBudget, problems, repair, validate
from colloquy.context.base import ContextInput
from colloquy.context.validate import INTERRUPTED
from colloquy.errors import ColloquyError, InvalidConversationError
from colloquy.messages import STORED, ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.models.base import ToolSpec
from colloquy.tokens import TokenCounter

U = Message.user
A = Message.assistant


def use(*ids: str, text: str = "") -> Message:
    blocks: list = [TextBlock(text=text)] if text else []
    return Message(role="assistant", content=[*blocks, *(ToolUseBlock(id=i, name="f") for i in ids)])


def result(*ids: str, text: str = "") -> Message:
    blocks: list = [ToolResultBlock(tool_use_id=i, content=f"r{i}") for i in ids]
    return Message(role="user", content=[*blocks, *([TextBlock(text=text)] if text else [])])


VALID = [U("hi"), use("a", "b", text="two calls"), result("a", "b"), A("done"), U("thanks")]


# -- problems / validate ---------------------------------------------------------------------------


def test_a_valid_conversation_has_no_problems() -> None:
    assert problems(VALID) == []
    validate(VALID)  # does not raise
    assert problems([U("only a question")]) == []
    assert problems([U("q"), A("a")]) == [], "ending on the assistant's reply is fine"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "no messages"),
        ([A("hello"), U("hi")], "first message is not from the user"),
        ([U("a"), U("b")], "both from the user"),
        ([U("a"), A("b"), A("c")], "both from the assistant"),
        ([Message(role="user", content=[])], "message 0 is empty"),
        ([Message(role="user", content=[TextBlock(text="  \n")])], "empty text block"),
        ([U("q"), use("x")], "tool_use x (f) has no tool_result"),
        ([U("q"), use("x", "y"), result("x")], "tool_use y (f) has no tool_result"),
        ([U("q"), A("plain"), result("x")], "tool_result x answers no tool_use"),
        ([result("x")], "tool_result x answers no tool_use"),
        ([U("q"), use("x"), Message(role="user", content=[
            TextBlock(text="first"), ToolResultBlock(tool_use_id="x", content="r")])],
         "tool_result blocks must come first"),
        # only a row stored before the placement rule (colloquy.messages.STORED) can hold this
        ([U("q"), Message.model_validate({"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "x"}]}, context=STORED)],
         "tool_result blocks in an assistant message"),
    ],
)
def test_each_broken_rule_is_named(messages: list[Message], expected: str) -> None:
    found = problems(messages)
    assert any(expected in p for p in found), found
    with pytest.raises(InvalidConversationError) as info:
        validate(messages)
    assert expected in str(info.value)
    assert isinstance(info.value, ColloquyError)


def test_tool_result_must_answer_the_message_just_before() -> None:
    # The tool_use is two messages back: the result answers nothing in the message before it.
    msgs = [U("q"), use("x"), result("x"), A("ok"), result("x", text="again")]
    assert any("tool_result x answers no tool_use" in p for p in problems(msgs))


def test_validate_lists_every_problem() -> None:
    with pytest.raises(InvalidConversationError) as info:
        validate([A("first"), A("second")])
    text = str(info.value)
    assert "first message is not from the user" in text
    assert "both from the assistant" in text


def test_a_request_checked_again_is_answered_by_the_memo_only_for_the_same_request() -> None:
    # repair_request then validate check each request twice on one thread: the second check
    # of the same messages is remembered; any other request (one message more, a changed
    # block, another system prompt) is checked afresh.
    from colloquy.context.validate import _LAST_VALID

    msgs = [U("hi"), A("hello"), U("again")]
    validate(msgs, [TextBlock(text="persona")])
    assert _LAST_VALID  # remembered
    with pytest.raises(InvalidConversationError, match="both from the user"):
        validate([*msgs, U("and again")])
    with pytest.raises(InvalidConversationError, match="empty text block"):
        validate([U("hi"), A("hello"), Message.model_construct(role="user", content=[
            TextBlock.model_construct(text=" ", type="text", cache_control=None)])])
    marked = [TextBlock(text="p", cache_control={"type": "ephemeral"})] * 5
    with pytest.raises(InvalidConversationError, match="breakpoints"):
        validate(msgs, marked)
    validate(msgs, [TextBlock(text="persona")])
    assert problems([*msgs[:2], A("no")]) != []


def test_the_validation_memo_answers_only_the_very_same_messages() -> None:
    # Another request with equal messages (another conversation saying the same) is checked
    # afresh, not compared by value, and becomes the remembered one, so the second check of
    # that request (validate after repair_request) is answered by identity.
    from colloquy.context.validate import _LAST_VALID, repair_request

    first = [U("hi"), A("hello"), U("again")]
    validate(first)
    copies = [m.model_copy(deep=True) for m in first]
    assert copies == first
    _, msgs, _, notes = repair_request([], copies)
    assert notes == [] and all(a is b for a, b in zip(msgs, copies))
    _, remembered = _LAST_VALID[threading.get_ident()]  # this thread's, whatever others hold
    assert all(a is b for a, b in zip(remembered, copies))
    validate(msgs)
    with pytest.raises(InvalidConversationError, match="both from the user"):
        validate([*copies[:2], U("x"), U("y")])


def test_forgetting_a_conversation_empties_the_validation_memo() -> None:
    from colloquy.caches import forget_cached
    from colloquy.context.validate import _LAST_VALID

    validate([U("secret words")])
    assert _LAST_VALID
    forget_cached(["any-conversation"])
    assert not _LAST_VALID


# -- repair ----------------------------------------------------------------------------------------


def test_repair_leaves_a_valid_conversation_untouched() -> None:
    msgs, sources, notes = repair(VALID, [[i] for i in range(1, 6)])
    assert msgs == VALID
    assert sources == [[1], [2], [3], [4], [5]]
    assert notes == []


def test_a_valid_request_keeps_owned_source_lists_and_copies_the_callers() -> None:
    # repair_owned_request (Chat.build_context, sources fresh from replay_thinking) hands the
    # lists back; repair_request copies them; both repair alike.
    from colloquy.context.validate import repair_owned_request, repair_request

    plain = [U("hi"), A("hello"), U("thanks")]
    given = [[1], [2], [3]]
    _, msgs, owned, notes = repair_owned_request([], plain, given)
    assert msgs == plain and notes == [] and owned == given
    assert all(a is b for a, b in zip(owned, given)) and owned is not given
    _, _, copied, _ = repair_request([], plain, given)
    assert copied == given and not any(a is b for a, b in zip(copied, given))
    broken = [U("a"), U("b"), A("c")]
    assert repair_owned_request([], broken, [[1], [2], [3]]) == \
        repair_request([], broken, [[1], [2], [3]])
    assert repair_owned_request([], broken, [[1], [2], [3]])[2] == [[1, 2], [3]]


def test_repair_without_sources_gives_empty_source_lists() -> None:
    msgs, sources, _ = repair([U("a"), A("b")])
    assert sources == [[], []]


def test_repair_drops_leading_assistant_messages() -> None:
    msgs, sources, notes = repair([A("stale reply"), A("another"), U("hi")], [[1], [2], [3]])
    assert msgs == [U("hi")]
    assert sources == [[3]]
    assert "dropped an assistant message at the start" in notes
    assert problems(msgs) == []


def test_repair_merges_consecutive_same_role_messages() -> None:
    # A failed model call leaves two user messages in a row.
    msgs, sources, notes = repair([U("first try"), U("second try"), A("answer")], [[1], [2], [3]])
    assert msgs == [Message(role="user", content=[TextBlock(text="first try"), TextBlock(text="second try")]),
                    A("answer")]
    assert sources == [[1, 2], [3]]
    assert "merged consecutive user messages" in notes
    msgs, _, notes = repair([U("q"), A("a"), A("b")])
    assert msgs[1].text == "ab" and len(msgs) == 2
    assert "merged consecutive assistant messages" in notes


def test_repair_drops_orphan_tool_results() -> None:
    msgs, sources, notes = repair(
        [U("q"), A("plain"), Message(role="user", content=[
            ToolResultBlock(tool_use_id="ghost", content="?"), TextBlock(text="next question")])],
        [[1], [2], [3]],
    )
    assert msgs == [U("q"), A("plain"), U("next question")]
    assert sources == [[1], [2], [3]]
    assert "dropped tool results that answer no tool call" in notes


def test_repair_drops_a_message_made_only_of_orphans_and_merges_around_it() -> None:
    msgs, sources, notes = repair([U("q"), A("a"), result("ghost"), A("b"), U("z")],
                                  [[1], [2], [3], [4], [5]])
    assert msgs == [U("q"), Message(role="assistant", content=[TextBlock(text="a"), TextBlock(text="b")]),
                    U("z")]
    assert sources == [[1], [2, 4], [5]]
    assert problems(msgs) == []


def test_repair_keeps_answered_results_and_drops_only_the_orphans() -> None:
    msgs, _, _ = repair([U("q"), use("a"), result("a", "ghost")])
    assert msgs[2].tool_results == [ToolResultBlock(tool_use_id="a", content="ra")]
    assert problems(msgs) == []


def test_repair_answers_an_interrupted_tool_call_at_the_end() -> None:
    # The process died after storing the tool call and before storing its result.
    msgs, sources, notes = repair([U("q"), use("t1", "t2", text="let me check")], [[1], [2]])
    assert len(msgs) == 3
    fill = msgs[2]
    assert fill.role == "user"
    assert fill.tool_results == [
        ToolResultBlock(tool_use_id="t1", content=INTERRUPTED, is_error=True),
        ToolResultBlock(tool_use_id="t2", content=INTERRUPTED, is_error=True),
    ]
    assert "interrupted" in INTERRUPTED
    assert sources == [[1], [2], []], "the synthetic result comes from no stored message"
    assert "answered interrupted tool calls with an error result" in notes
    assert problems(msgs) == []


def test_repair_answers_an_interrupted_call_before_the_next_question() -> None:
    # Tool call stored, crash, then the user asked again: results go first, then the words.
    msgs, sources, _ = repair([U("q"), use("t1"), U("hello?")], [[1], [2], [3]])
    assert msgs[2].content == [
        ToolResultBlock(tool_use_id="t1", content=INTERRUPTED, is_error=True),
        TextBlock(text="hello?"),
    ]
    assert sources == [[1], [2], [3]]
    assert problems(msgs) == []


def test_repair_answers_only_the_missing_calls() -> None:
    msgs, _, _ = repair([U("q"), use("a", "b"), result("a", text="and?")])
    results = msgs[2].tool_results
    assert [r.tool_use_id for r in results] == ["a", "b"]
    assert results[0].is_error is False and results[1].is_error is True
    assert msgs[2].content[-1] == TextBlock(text="and?")
    assert problems(msgs) == []


def test_repair_moves_tool_results_first() -> None:
    msgs, _, _ = repair([U("q"), use("a"), Message(role="user", content=[
        TextBlock(text="also this"), ToolResultBlock(tool_use_id="a", content="r"), ImageBlock(
            source={"type": "url", "url": "https://example.com/x.png"})])])
    assert [b.type for b in msgs[2].content] == ["tool_result", "text", "image"]
    assert problems(msgs) == []


def test_repair_drops_empty_text_blocks_and_empty_messages() -> None:
    msgs, sources, notes = repair(
        [Message(role="user", content=[TextBlock(text=""), TextBlock(text="hi"), TextBlock(text=" ")]),
         Message(role="assistant", content=[TextBlock(text="   ")]),
         Message(role="assistant", content=[TextBlock(text="\n"), TextBlock(text="real reply")])],
        [[1], [2], [3]],
    )
    assert msgs == [U("hi"), A("real reply")]
    assert sources == [[1], [3]]
    assert "dropped an empty message" in notes
    assert problems(msgs) == []


def test_repair_drops_tool_results_from_assistant_messages() -> None:
    msgs, _, _ = repair([U("q"), Message.model_validate({"role": "assistant", "content": [
        ToolResultBlock(tool_use_id="x", content="?"), TextBlock(text="answer")]},
        context=STORED)])  # a row stored before the placement rule
    assert msgs == [U("q"), A("answer")]


def test_repair_notes_are_not_repeated() -> None:
    _, _, notes = repair([U("a"), U("b"), A("c"), A("d"), U("e"), U("f")])
    assert notes.count("merged consecutive user messages") == 1
    assert len(notes) == len(set(notes))


def test_repair_never_invents_words() -> None:
    msgs, _, _ = repair([A("only the assistant spoke")])
    assert msgs == []
    assert problems(msgs) == ["the request has no messages"]


# -- property-style: random logs, truncated at random points ---------------------------------------


class LogGen:
    """Random conversation logs shaped like what the chat engine stores, with the damage that
    real life does to them: failed model calls (a user message with no reply), crashes between a
    tool call and its result, crashes mid-log (truncation), empty text, partial tool results."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def _id(self) -> str:
        self.n += 1
        return f"toolu_{self.n}"

    def _text(self) -> str:
        r = self.rng
        return r.choice(["", " ", "ok", "hello there", "a longer sentence " * r.randint(1, 30)])

    def user_turn(self) -> Message:
        r = self.rng
        blocks: list = [TextBlock(text=r.choice(["hi", "what now?", "tell me more " * r.randint(1, 20)]))]
        if r.random() < 0.1:
            blocks.append(ImageBlock(source={"type": "url", "url": "https://example.com/i.png"}))
        if r.random() < 0.1:
            blocks.insert(0, TextBlock(text=""))
        return Message(role="user", content=blocks)

    def log(self) -> list[Message]:
        r = self.rng
        out: list[Message] = []
        for _ in range(r.randint(1, 8)):
            out.append(self.user_turn())
            if r.random() < 0.15:
                continue  # the model call failed: no reply stored
            for _round in range(r.choice([0, 0, 1, 2, 3])):
                ids = [self._id() for _ in range(r.randint(1, 3))]
                text = self._text()
                out.append(Message(role="assistant", content=[
                    *([TextBlock(text=text)] if text and r.random() < 0.5 else []),
                    *(ToolUseBlock(id=i, name=r.choice(["add", "search"]), input={"i": i}) for i in ids),
                ]))
                if r.random() < 0.1:
                    break  # crashed before the results were stored
                answered = ids if r.random() < 0.9 else r.sample(ids, r.randint(0, len(ids)))
                if answered:
                    out.append(Message(role="user", content=[
                        ToolResultBlock(tool_use_id=i, content=self._text(), is_error=r.random() < 0.2)
                        for i in answered]))
            if r.random() < 0.9:
                text = self._text()
                out.append(Message(role="assistant", content=[TextBlock(text=text)]))
        # A crash can cut the log anywhere.
        if r.random() < 0.5:
            out = out[: r.randint(1, len(out))]
        return out

    def garbage(self) -> list[Message]:
        """Anything at all: random roles, random blocks, ids from a small pool."""
        r = self.rng
        ids = ["a", "b", "c"]
        msgs = []
        for _ in range(r.randint(0, 8)):
            blocks: list = []
            for _ in range(r.randint(0, 3)):
                kind = r.choice(["text", "empty", "use", "result", "image"])
                if kind == "text":
                    blocks.append(TextBlock(text="t"))
                elif kind == "empty":
                    blocks.append(TextBlock(text=r.choice(["", "  "])))
                elif kind == "use":
                    blocks.append(ToolUseBlock(id=r.choice(ids) + str(self._id()), name="f"))
                    ids.append(blocks[-1].id)
                elif kind == "result":
                    blocks.append(ToolResultBlock(tool_use_id=r.choice(ids), content="r"))
                else:
                    blocks.append(ImageBlock(source={"type": "url", "url": "https://e.x/i.png"}))
            msgs.append(Message.model_validate(  # any stored row, placement rule or not
                {"role": r.choice(["user", "assistant"]), "content": blocks}, context=STORED))
        return msgs


def _check_sources(sources: list[list[int]], n: int) -> None:
    flat = [s for group in sources for s in group]
    assert flat == sorted(flat), "sources keep the log's order"
    assert len(flat) == len(set(flat)), "no stored message is sent twice"
    assert all(1 <= s <= n for s in flat)


def test_repair_makes_any_damaged_log_valid() -> None:
    rng = random.Random(20240601)
    gen = LogGen(rng)
    for _ in range(600):
        log = gen.log()
        msgs, sources, _ = repair(log, [[i] for i in range(1, len(log) + 1)])
        if not msgs:
            # Only possible when no user text survived (a log cut right after a failed call
            # with an empty message cannot happen: every user turn has text).
            pytest.fail(f"repair emptied a log that starts with a user turn: {log}")
        assert problems(msgs) == [], log
        _check_sources(sources, len(log))
        assert len(sources) == len(msgs)
        # Repair is idempotent.
        again, _, notes = repair(msgs)
        assert again == msgs and notes == []


def test_repair_of_arbitrary_message_lists_is_valid_or_empty() -> None:
    rng = random.Random(7)
    gen = LogGen(rng)
    for _ in range(2000):
        msgs_in = gen.garbage()
        msgs, sources, _ = repair(msgs_in, [[i] for i in range(1, len(msgs_in) + 1)])
        assert msgs == [] or problems(msgs) == [], msgs_in
        _check_sources(sources, len(msgs_in))


def test_every_policy_output_is_valid_after_repair() -> None:
    rng = random.Random(99)
    gen = LogGen(rng)
    tools = [ToolSpec(name="add", description="Add two numbers.")]
    policies = [FullHistory(), *(RollingWindow(turns=n) for n in (1, 2, 3, 5)),
                *(TokenBudget(max_input_tokens=b) for b in (1, 60, 200, 800, 5000))]
    for _ in range(250):
        log = gen.log()
        # The engine always builds a context after storing a user message.
        log.append(gen.user_turn())
        history = stored(log)
        inp = ContextInput(history=history, system=rng.choice(["", "You are terse."]),
                           model="m", tools=tools, counter=TokenCounter())
        for policy in policies:
            ctx = policy.build(inp)
            assert ctx.sources == [[sm.seq] for sm in history[len(history) - len(ctx.messages):]], \
                "a basic policy keeps a suffix of the log"
            msgs, sources, _ = repair(ctx.messages, ctx.sources)
            assert problems(msgs) == [], (policy, log)
            assert msgs[0].role == "user"
            _check_sources(sources, len(log))
            assert len(log) in sources[-1], "the newest message is always sent"
