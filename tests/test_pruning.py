"""Tool-output pruning: old tool results become stubs, recent ones stay whole, pairs stay valid,
and the stored log keeps every byte."""

from __future__ import annotations

import pytest

from colloquy import Chat, MemoryStore
from colloquy.context import ContextInput, FullHistory, TokenBudget, problems
from colloquy.context.compose import ComposedPolicy
from colloquy.context.pruning import STUB_PREFIX, ToolOutputPruning
from colloquy.errors import ConfigError
from colloquy.messages import Message, StoredMessage, ToolResultBlock, ToolUseBlock
from colloquy.models import ScriptedModel, tool_call
from colloquy.tools import tool


def page(n: int) -> str:
    return f"PAGE{n} " + "lorem ipsum dolor sit amet " * 80


@tool
def fetch(n: int) -> str:
    """Fetch page n."""
    return page(n)


@tool
def search(q: str) -> str:
    """Search."""
    return f"SEARCH {q} " + "result line " * 60


def results_by_id(messages: list[Message]) -> dict[str, ToolResultBlock]:
    return {r.tool_use_id: r for m in messages for r in m.tool_results}


def test_old_results_are_stubbed_recent_ones_whole_pairs_valid() -> None:
    calls = [tool_call("fetch", {"n": i}, id=f"f{i}") for i in range(4)]
    model = ScriptedModel([calls[0], calls[1], "read two pages", calls[2], calls[3], "done"])
    store = MemoryStore()
    chat = Chat(model, store=store, session_id="p", tools=[fetch],
                policy=ToolOutputPruning(keep_rounds=2, head_chars=40).wrap(FullHistory()))
    chat.send("read pages 0 and 1")
    chat.send("now pages 2 and 3")
    last = model.requests[-1]  # the call after the 4th tool round
    assert problems(last.messages) == []
    res = results_by_id(last.messages)
    assert set(res) == {"f0", "f1", "f2", "f3"}  # every tool_use still has its result
    for old in ("f0", "f1"):
        text = res[old].text
        assert text.startswith(f"{STUB_PREFIX}: fetch, {len(page(int(old[1])))} chars; head: PAGE")
        assert len(text) < 120
    assert res["f2"].text == page(2) and res["f3"].text == page(3)
    # The stored log is untouched: pruning shapes requests, never the log.
    stored = [r for sm in store.load("p") for r in sm.message.tool_results]
    assert [r.text for r in stored] == [page(i) for i in range(4)]
    # Earlier requests saw their own recent results whole.
    assert results_by_id(model.requests[2].messages)["f1"].text == page(1)


def test_per_tool_keep_rounds() -> None:
    msgs: list[Message] = [Message.user("go")]
    for i in range(4):
        name = "search" if i % 2 == 0 else "fetch"
        msgs.append(Message(role="assistant", content=[ToolUseBlock(id=f"t{i}", name=name, input={})]))
        msgs.append(Message(role="user", content=[ToolResultBlock(tool_use_id=f"t{i}", content=f"out{i} " * 50)]))
    msgs.append(Message.assistant("ok"))
    out = ToolOutputPruning(keep_rounds=1, per_tool={"search": 4}).apply(msgs)
    res = results_by_id(out)
    assert res["t0"].text.startswith("out0")  # search: kept for 4 rounds
    assert res["t2"].text.startswith("out2")
    assert res["t1"].text.startswith(f"{STUB_PREFIX}: fetch")  # fetch: only the newest round
    assert res["t3"].text.startswith("out3")  # the newest round, whole
    assert len(out) == len(msgs) and problems(out) == []


def test_parallel_calls_errors_and_mixed_blocks_are_preserved() -> None:
    msgs = [
        Message.user("go"),
        Message(role="assistant", content=[ToolUseBlock(id="a", name="search", input={}),
                                           ToolUseBlock(id="b", name="fetch", input={})]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="a", content="x" * 500, is_error=True),
                                      ToolResultBlock(tool_use_id="b", content="y" * 500)]),
        Message(role="assistant", content=[ToolUseBlock(id="c", name="fetch", input={})]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="c", content="z" * 500)]),
        Message.assistant("done"),
    ]
    out = ToolOutputPruning(keep_rounds=1, head_chars=5).apply(msgs)
    a, b = out[2].tool_results
    assert a.is_error and a.text == f"{STUB_PREFIX}: search, 500 chars; head: xxxxx...]"
    assert b.text == f"{STUB_PREFIX}: fetch, 500 chars; head: yyyyy...]"
    assert out[4].tool_results[0].text == "z" * 500
    assert problems(out) == []
    # Pruning is idempotent: a stub is never stubbed again.
    assert ToolOutputPruning(keep_rounds=1, head_chars=5).apply(out) == out


def test_as_a_message_transform_in_the_composite_and_with_a_budget() -> None:
    msgs: list[Message] = [Message.user("go")]
    for i in range(3):
        msgs.append(Message(role="assistant", content=[ToolUseBlock(id=f"t{i}", name="fetch", input={})]))
        msgs.append(Message(role="user", content=[ToolResultBlock(tool_use_id=f"t{i}", content=page(i))]))
    msgs.append(Message.assistant("ok"))
    msgs.append(Message.user("and now?"))
    history = [StoredMessage(conversation_id="x", seq=i, message=m) for i, m in enumerate(msgs, 1)]
    inp = ContextInput(history=history)
    composed = ComposedPolicy(100_000, transforms=[ToolOutputPruning(keep_rounds=1)]).build(inp)
    res = results_by_id(composed.messages)
    assert res["t0"].text.startswith(STUB_PREFIX) and res["t1"].text.startswith(STUB_PREFIX)
    assert res["t2"].text == page(2)
    assert composed.sources == [[sm.seq] for sm in history]  # provenance unchanged
    wrapped = ToolOutputPruning(keep_rounds=1).wrap(TokenBudget(100_000)).build(inp)
    assert wrapped.messages == composed.messages


def test_stepped_pruning_moves_its_boundary_every_step_rounds() -> None:
    def convo(rounds: int) -> list[Message]:
        out: list[Message] = [Message.user("go")]
        for i in range(rounds):
            out.append(Message(role="assistant", content=[ToolUseBlock(id=f"t{i}", name="fetch", input={})]))
            out.append(Message(role="user", content=[ToolResultBlock(tool_use_id=f"t{i}", content=page(i))]))
        return out

    pruning = ToolOutputPruning(keep_rounds=2, step=3)
    pruned_counts = []
    for rounds in range(1, 12):
        out = pruning.apply(convo(rounds))
        pruned = [r.tool_use_id for m in out for r in m.tool_results if r.text.startswith(STUB_PREFIX)]
        pruned_counts.append(len(pruned))
        assert all(int(t[1:]) < rounds - 2 for t in pruned)  # the 2 newest rounds always whole
    # The boundary jumps by 3 rounds at a time and stays put in between.
    assert pruned_counts == [0, 0, 0, 0, 3, 3, 3, 6, 6, 6, 9]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        ToolOutputPruning(keep_rounds=0)
    with pytest.raises(ConfigError):
        ToolOutputPruning(per_tool={"fetch": 0})
    with pytest.raises(ConfigError):
        ToolOutputPruning(step=0)
