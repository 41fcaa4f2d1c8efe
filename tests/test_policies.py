"""Context policies: FullHistory, RollingWindow and TokenBudget on logs with multi-round tool
exchanges. Whatever the window, a tool_use is never separated from its tool_result and the
context starts with a user message."""

from __future__ import annotations

import pytest
from conftest import stored

from colloquy.context import (
    Context,
    ContextInput,
    ContextPolicy,
    FullHistory,
    RollingWindow,
    TokenBudget,
    problems,
)
from colloquy.context.base import iter_turns_backwards, turn_start_index
from colloquy.errors import ConfigError
from colloquy.messages import Message, StoredMessage, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.models.base import ToolSpec
from colloquy.tokens import TokenCounter, estimate_tools

SYSTEM = "You are a careful assistant."


def tool_turn(k: int, rounds: int, calls_per_round: int = 1, question: str | None = None) -> list[Message]:
    """One turn: a question, ``rounds`` tool exchanges (parallel calls per round), an answer."""
    out = [Message.user(question or f"question {k}: " + "words " * (k % 4 + 1))]
    for r in range(rounds):
        ids = [f"t{k}_{r}_{c}" for c in range(calls_per_round)]
        out.append(Message(role="assistant", content=[
            *([TextBlock(text=f"checking {k}.{r}")] if r % 2 == 0 else []),
            *(ToolUseBlock(id=i, name="lookup", input={"k": k, "r": r}) for i in ids),
        ]))
        out.append(Message(role="user", content=[
            ToolResultBlock(tool_use_id=i, content=f"result {i} " * 3) for i in ids]))
    out.append(Message.assistant(f"answer {k}"))
    return out


def conversation(n_turns: int) -> tuple[list[StoredMessage], list[int]]:
    """A stored log of ``n_turns`` turns with 0-3 tool rounds each, and each turn's start index."""
    msgs: list[Message] = []
    starts: list[int] = []
    for k in range(n_turns):
        starts.append(len(msgs))
        msgs.extend(tool_turn(k, rounds=k % 4, calls_per_round=1 + k % 3))
    return stored(msgs), starts


def inp(history: list[StoredMessage], counter: TokenCounter, **kw: object) -> ContextInput:
    kw.setdefault("system", SYSTEM)
    kw.setdefault("model", "m")
    return ContextInput(history=history, counter=counter, **kw)  # type: ignore[arg-type]


def assert_no_split_tool_exchange(ctx: Context) -> None:
    msgs = ctx.messages
    for i, m in enumerate(msgs):
        if m.tool_uses:
            assert i + 1 < len(msgs), "a tool_use at the end without its result"
            answered = {r.tool_use_id for r in msgs[i + 1].tool_results}
            assert {u.id for u in m.tool_uses} <= answered
        if m.tool_results:
            assert i > 0, "a tool_result at the front without its tool_use"
            asked = {u.id for u in msgs[i - 1].tool_uses}
            assert {r.tool_use_id for r in m.tool_results} <= asked


# -- FullHistory ------------------------------------------------------------------------------------


def test_full_history_keeps_everything(counter: TokenCounter) -> None:
    history, _ = conversation(6)
    ctx = FullHistory().build(inp(history, counter))
    assert ctx.messages == [sm.message for sm in history]
    assert ctx.sources == [[sm.seq] for sm in history]
    assert ctx.system == [TextBlock(text=SYSTEM)]
    assert ctx.notes == [] and ctx.derived == []
    assert problems(ctx.messages) == []


def test_empty_system_prompt_gives_no_system_blocks(counter: TokenCounter) -> None:
    history, _ = conversation(1)
    assert FullHistory().build(inp(history, counter, system="")).system == []


def test_the_persona_is_never_trimmed(counter: TokenCounter) -> None:
    history, _ = conversation(8)
    for policy in (RollingWindow(turns=1), TokenBudget(max_input_tokens=10)):
        ctx = policy.build(inp(history, counter))
        assert ctx.system == [TextBlock(text=SYSTEM)]
        assert all(SYSTEM not in m.text for m in ctx.messages)


def test_policies_are_context_policies() -> None:
    for p in (FullHistory(), RollingWindow(3), TokenBudget(100)):
        assert isinstance(p, ContextPolicy)


# -- RollingWindow ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_turns", [1, 4, 7])
def test_rolling_window_keeps_exactly_the_last_n_turns(n_turns: int, counter: TokenCounter) -> None:
    history, starts = conversation(n_turns)
    for window in range(1, n_turns + 3):
        ctx = RollingWindow(turns=window).build(inp(history, counter))
        kept = min(window, n_turns)
        first = starts[n_turns - kept]
        assert ctx.messages == [sm.message for sm in history[first:]], window
        assert ctx.sources == [[sm.seq] for sm in history[first:]]
        assert sum(m.starts_turn for m in ctx.messages) == kept
        assert ctx.messages[0].role == "user" and ctx.messages[0].starts_turn
        assert_no_split_tool_exchange(ctx)
        assert problems(ctx.messages) == []


def test_rolling_window_with_the_new_question_pending(counter: TokenCounter) -> None:
    """In a chat the log ends with the user's new message: it is the newest turn."""
    history, starts = conversation(5)
    starts = [*starts, len(history)]
    history = stored([*(sm.message for sm in history), Message.user("and now?")])
    for window in range(1, 8):
        ctx = RollingWindow(turns=window).build(inp(history, counter))
        first = starts[max(0, len(starts) - window)]
        assert ctx.messages == [sm.message for sm in history[first:]]
        assert ctx.messages[-1] == Message.user("and now?")
        assert sum(m.starts_turn for m in ctx.messages) == min(window, 6)
        assert problems(ctx.messages) == []
    assert RollingWindow(turns=1).build(inp(history, counter)).messages == [Message.user("and now?")]


def test_rolling_window_never_cuts_inside_a_long_tool_exchange(counter: TokenCounter) -> None:
    # One turn with 6 rounds of 3 parallel calls: a window of 1 keeps the whole turn.
    msgs = [*tool_turn(0, rounds=2), *tool_turn(1, rounds=6, calls_per_round=3)]
    history = stored(msgs)
    ctx = RollingWindow(turns=1).build(inp(history, counter))
    assert ctx.messages == tool_turn(1, rounds=6, calls_per_round=3)
    assert len(ctx.messages) == 1 + 6 * 2 + 1
    assert_no_split_tool_exchange(ctx)


def test_a_user_message_with_text_after_tool_results_starts_a_turn(counter: TokenCounter) -> None:
    msgs = [
        Message.user("q1"),
        Message(role="assistant", content=[ToolUseBlock(id="a", name="f")]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="a", content="r"),
                                      TextBlock(text="q2, while you are at it")]),
        Message.assistant("both answered"),
    ]
    ctx = RollingWindow(turns=1).build(inp(stored(msgs), counter))
    # The cut may land at that message, but it then starts with a tool_result: repair's job.
    assert ctx.sources == [[3], [4]]


def test_rolling_window_needs_at_least_one_turn() -> None:
    with pytest.raises(ConfigError):
        RollingWindow(turns=0)
    with pytest.raises(ConfigError):
        RollingWindow(turns=-3)


def test_turn_helpers() -> None:
    history, starts = conversation(4)
    assert turn_start_index(history, 1) == starts[-1]
    assert turn_start_index(history, 4) == 0
    assert turn_start_index(history, 99) == 0
    assert turn_start_index(history, 0) == len(history)
    ranges = list(iter_turns_backwards(history))
    assert ranges == [(starts[3], len(history)), (starts[2], starts[3]), (starts[1], starts[2]),
                      (0, starts[1])]
    # Messages before the first turn start form a turn of their own.
    lead = stored([Message.assistant("imported"), Message.user("hi")])
    assert list(iter_turns_backwards(lead)) == [(1, 2), (0, 1)]


# -- TokenBudget ------------------------------------------------------------------------------------

TOOLS = [ToolSpec(name="lookup", description="Look a thing up in the big reference book. " * 5,
                  input_schema={"type": "object", "properties": {"k": {"type": "integer"}}})]


def expected_budget_start(history: list[StoredMessage], starts: list[int], budget: int,
                          counter: TokenCounter, system: str, tools: list[ToolSpec]) -> int:
    """Oldest turn start whose suffix (plus system and tools) fits; else the newest turn."""
    extra = estimate_tools(tools)
    fitting = [s for s in starts
               if counter.count("m", system, [sm.message for sm in history[s:]], extra=extra) <= budget]
    return min(fitting) if fitting else starts[-1]


def test_token_budget_keeps_the_newest_whole_turns_that_fit(counter: TokenCounter) -> None:
    history, starts = conversation(8)
    total = counter.count("m", SYSTEM, [sm.message for sm in history], extra=estimate_tools(TOOLS))
    seen = set()
    for budget in range(20, total + 50, 7):
        ctx = TokenBudget(max_input_tokens=budget).build(inp(history, counter, tools=TOOLS))
        first = expected_budget_start(history, starts, budget, counter, SYSTEM, TOOLS)
        assert ctx.messages == [sm.message for sm in history[first:]], budget
        seen.add(first)
        used = counter.count("m", SYSTEM, ctx.messages, extra=estimate_tools(TOOLS))
        if used > budget:  # only the newest turn, alone over budget, may exceed it
            assert first == starts[-1] and len(ctx.notes) == 1
        else:
            assert ctx.notes == []
        assert ctx.messages[0].starts_turn
        assert_no_split_tool_exchange(ctx)
    assert seen == set(starts), "every cut point was exercised"


def test_token_budget_counts_the_system_prompt_and_tools(counter: TokenCounter) -> None:
    history, starts = conversation(8)
    msgs = [sm.message for sm in history]
    budget = counter.count("m", "", msgs) - 1  # everything but a little fits with nothing else
    bare = TokenBudget(budget).build(inp(history, counter, system=""))
    long_persona = "Follow these rules. " * 60
    with_persona = TokenBudget(budget).build(inp(history, counter, system=long_persona))
    with_tools = TokenBudget(budget).build(inp(history, counter, system="", tools=TOOLS * 3))
    assert len(with_persona.messages) < len(bare.messages)
    assert len(with_tools.messages) < len(bare.messages)
    for ctx, system, tools in ((bare, "", []), (with_persona, long_persona, []),
                               (with_tools, "", TOOLS * 3)):
        assert counter.count("m", system, ctx.messages, extra=estimate_tools(tools)) <= budget


def test_token_budget_keeps_the_newest_turn_even_alone_over_budget(counter: TokenCounter) -> None:
    history, starts = conversation(3)
    history = stored([*(sm.message for sm in history), Message.user("a very long question " * 200)])
    ctx = TokenBudget(max_input_tokens=50).build(inp(history, counter))
    assert ctx.messages == [Message.user("a very long question " * 200)]
    assert ctx.sources == [[len(history)]]
    assert len(ctx.notes) == 1
    assert "over the 50-token budget" in ctx.notes[0]


def test_token_budget_within_budget_keeps_all_without_notes(counter: TokenCounter) -> None:
    history, _ = conversation(5)
    ctx = TokenBudget(max_input_tokens=1_000_000).build(inp(history, counter, tools=TOOLS))
    assert ctx.messages == [sm.message for sm in history]
    assert ctx.notes == []


def test_token_budget_uses_the_calibrated_factor(counter: TokenCounter) -> None:
    history, _ = conversation(8)
    budget = counter.count("m", SYSTEM, [sm.message for sm in history])
    assert TokenBudget(budget).build(inp(history, counter)).messages == [sm.message for sm in history]
    # The API billed twice what we estimated: the same budget now holds fewer turns.
    counter.calibrate("m", 1000, 2000)
    assert counter.factor("m") == 2.0
    ctx = TokenBudget(budget).build(inp(history, counter))
    assert len(ctx.messages) < len(history)
    assert counter.count("m", SYSTEM, ctx.messages) <= budget


def test_token_budget_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        TokenBudget(max_input_tokens=0)


# -- Context bookkeeping ----------------------------------------------------------------------------


def test_context_sources_map_messages_to_stored_seqs(counter: TokenCounter) -> None:
    history, starts = conversation(5)
    ctx = RollingWindow(turns=2).build(inp(history, counter))
    for message, src in zip(ctx.messages, ctx.sources, strict=True):
        (seq,) = src
        assert history[seq - 1].message == message
    assert ctx.included_seqs == set(range(starts[3] + 1, len(history) + 1))


def test_context_input_query_is_the_newest_question() -> None:
    history, _ = conversation(3)
    assert ContextInput(history=history).query == "question 2: " + "words " * 3
    assert ContextInput(history=[]).query == ""
