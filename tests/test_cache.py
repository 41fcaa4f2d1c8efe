"""Prompt-cache-aware trimming: stepped cuts keep the replayed prefix identical between trims,
breakpoints follow the API's rules, and cache reads and writes are billed at their own prices."""

from __future__ import annotations

from typing import Any

import pytest

from colloquy import Chat, MemoryStore
from colloquy.context import ContextInput, TokenBudget, problems
from colloquy.context.cache import (
    MAX_BREAKPOINTS,
    CacheAwareWindow,
    CacheBreakpoints,
    SteppedWindow,
    add_breakpoints,
    is_anthropic,
    min_cacheable_tokens,
)
from colloquy.context.compose import ComposedPolicy
from colloquy.messages import Message, StoredMessage
from colloquy.models import FunctionModel, ModelRequest, ModelResponse
from colloquy.messages import TextBlock
from colloquy.tokens import TokenCounter
from colloquy.usage import Usage, price_for

LONG_PERSONA = "You are a meticulous research assistant. " + "Follow the house style guide. " * 300
SONNET = "claude-sonnet-4-6"


def history(n_pairs: int, words: int = 40, cid: str = "c") -> list[StoredMessage]:
    out = []
    for i in range(n_pairs):
        for j, role in enumerate(("user", "assistant")):
            seq = 2 * i + j + 1
            text = f"{role} turn {i}: " + " ".join(f"w{i}x{k}" for k in range(words))
            out.append(StoredMessage(conversation_id=cid, seq=seq, message=Message(role=role, content=text)))
    return out


def strip(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", exclude={"content": {"__all__": {"cache_control"}}})
            for m in messages]


def markers(system: list[TextBlock], messages: list[Message]) -> list[tuple[str, int]]:
    out = [("system", i) for i, b in enumerate(system) if b.cache_control]
    out += [("message", i) for i, m in enumerate(messages) for b in m.content if b.cache_control]
    return out


def test_minimum_cacheable_lengths_and_providers() -> None:
    assert min_cacheable_tokens("claude-sonnet-4-6") == 1024
    assert min_cacheable_tokens("claude-sonnet-4-5-20250929") == 1024
    assert min_cacheable_tokens("claude-opus-4-1") == 1024
    assert min_cacheable_tokens("claude-opus-4-6") == 4096
    assert min_cacheable_tokens("claude-opus-4-5-20251101") == 4096
    assert min_cacheable_tokens("claude-haiku-4-5") == 4096
    assert min_cacheable_tokens("claude-3-5-haiku-latest") == 2048
    assert min_cacheable_tokens("anthropic:claude-sonnet-4-6") == 1024
    for other in ("gpt-4o", "echo", "ollama:llama3", "openai:claude-lookalike"):
        assert min_cacheable_tokens(other) is None and not is_anthropic(other)


def replay(policy: Any, n_pairs: int, model: str = SONNET, system: str = LONG_PERSONA,
           counter: TokenCounter | None = None) -> list[tuple[list[TextBlock], list[Message], int]]:
    """Each request of a chat that grows turn by turn: (system, messages, start seq)."""
    log = history(n_pairs)
    counter = counter or TokenCounter()
    out = []
    for i in range(1, len(log) + 1, 2):  # a request after each user message
        ctx = policy.build(ContextInput(history=log[:i], system=system, model=model,
                                        conversation_id="c", counter=counter))
        out.append((ctx.system, ctx.messages, ctx.sources[0][0]))
    return out


def test_prefix_is_identical_between_trims_and_trims_come_in_steps() -> None:
    policy = CacheAwareWindow(6000)
    requests = replay(policy, 150)
    counter = TokenCounter()
    starts = [s for _, _, s in requests]
    trims = [i for i in range(1, len(starts)) if starts[i] != starts[i - 1]]
    assert 2 <= len(trims) <= len(starts) // 8  # steps, not a shift per turn
    for i in range(1, len(requests)):
        prev_sys, prev_msgs, _ = requests[i - 1]
        sys_, msgs, _ = requests[i]
        assert sys_ == prev_sys  # persona block (with its marker) byte-identical every turn
        if i not in trims:
            # The previous request's messages are an exact prefix of this one's.
            assert strip(msgs[:len(prev_msgs)]) == strip(prev_msgs)
        assert counter.count(SONNET, sys_, msgs) <= 6000
        assert problems(msgs) == []
    # After a trim the history is down to about the low-water mark, then it grows again.
    after = [counter.count(SONNET, [], requests[t][1]) for t in trims]
    assert all(a < 6000 * 0.6 for a in after)


def test_cut_points_are_the_same_in_a_fresh_process() -> None:
    """The cut is a rule on cumulative token positions of the log, not state of a process."""
    log = history(120)
    for end in (81, 151, 239):
        a = SteppedWindow(high_water=3000).window_start(
            ContextInput(history=log[:end], conversation_id="c"), 3000)
        warm = SteppedWindow(high_water=3000)
        for i in range(1, end + 1, 2):
            b = warm.window_start(ContextInput(history=log[:i], conversation_id="c"), 3000)
        assert a == b and log[a].role == "user"


def test_breakpoints_on_system_and_stable_prefix_at_most_four() -> None:
    requests = replay(CacheAwareWindow(8000), 40)
    for sys_, msgs, _ in requests[3:]:
        marks = markers(sys_, msgs)
        assert len(marks) <= MAX_BREAKPOINTS
        assert ("system", 0) in marks
        last_user = len(msgs) - 1
        prev_user = max(i for i in range(last_user) if msgs[i].role == "user")
        assert ("message", last_user) in marks and ("message", prev_user) in marks
    # The previous request's final marker sits where this request's "stable end" is.
    (_, m1, _), (_, m2, _) = requests[10], requests[11]
    assert m2[len(m1) - 1].content[-1].cache_control == {"type": "ephemeral"}


def test_no_breakpoints_for_other_providers_or_short_prefixes() -> None:
    for _, msgs, _ in replay(CacheAwareWindow(8000), 20, model="gpt-4o"):
        assert not any(b.cache_control for m in msgs for b in m.content)
    sys_, msgs, _ = replay(CacheAwareWindow(8000), 20, model="gpt-4o")[-1]
    assert not any(b.cache_control for b in sys_)
    # A short persona and a short chat: nothing reaches 1,024 tokens, nothing is marked.
    short = replay(CacheAwareWindow(8000), 3, system="Be brief.")
    assert all(markers(s, m) == [] for s, m, _ in short)
    # Same prefix, a model with a higher minimum: the ~1,700-token persona is not marked.
    sys_, msgs, _ = replay(CacheAwareWindow(8000), 2, model="claude-opus-4-6")[-1]
    assert not sys_[0].cache_control
    sys_, msgs, _ = replay(CacheAwareWindow(8000), 2, model=SONNET)[-1]
    assert sys_[0].cache_control == {"type": "ephemeral"}


def test_breakpoints_wrapper_for_any_policy_and_existing_markers_counted() -> None:
    log = history(30)
    inp = ContextInput(history=log[:-1], system=LONG_PERSONA, model=SONNET, conversation_id="c")
    ctx = CacheBreakpoints(TokenBudget(5000)).build(inp)
    assert len(markers(ctx.system, ctx.messages)) == 3
    again = add_breakpoints(ctx, inp)  # idempotent: never a fifth marker
    assert len(markers(again.system, again.messages)) == 3
    vol = CacheBreakpoints(TokenBudget(5000), volatile_last=True).build(inp)
    marks = markers(vol.system, vol.messages)
    assert ("message", len(vol.messages) - 1) not in marks and ("message", len(vol.messages) - 2) in marks


def test_stepped_window_as_a_recent_window_with_a_varying_budget() -> None:
    """As the composite's RecentWindow: the budget it is handed varies with what the other parts
    took, but with a fixed grid (step_tokens) the cut points stay put."""
    log = history(100, words=16)  # ~70 estimated tokens a message (w1x2 is 4 BPE tokens)
    window = SteppedWindow(high_water=3000, step_tokens=1500)
    starts = []
    for n, i in enumerate(range(101, 200, 2)):
        inp = ContextInput(history=log[:i], conversation_id="c")
        start = window.window_start(inp, 3000 + (n % 3) * 100)  # e.g. facts took more or less
        assert log[start].role == "user" and start <= i - 1
        assert TokenCounter().raw("", [sm.message for sm in log[start:i]]) <= 3000
        starts.append(start)
    assert len(set(starts)) <= len(starts) // 5
    policy = ComposedPolicy(4000, recent=SteppedWindow(high_water=3000, step_tokens=1500))
    ctx = policy.build(ContextInput(history=log[:151], conversation_id="c"))
    assert problems(ctx.messages) == [] and ctx.messages[-1].text.startswith("user turn 75")


def test_cache_reads_are_billed_at_a_tenth() -> None:
    """A model reporting cache usage (as Anthropic's does) is priced read 0.1x, write 1.25x."""
    def answer(req: ModelRequest) -> ModelResponse:
        marked = sum(1 for m in req.messages for b in m.content if b.cache_control)
        return ModelResponse(content=[TextBlock(text=f"{marked} markers")], model=SONNET,
                             usage=Usage(input_tokens=100, output_tokens=10,
                                         cache_write_tokens=2000, cache_read_tokens=10_000))

    model = FunctionModel(answer, name=SONNET)
    model.provider = "anthropic"  # stands in for Claude: priced as Claude (offline: $0)
    chat = Chat(model, system=LONG_PERSONA, store=MemoryStore(), session_id="cost",
                policy=CacheAwareWindow(20_000), title_model=False)
    chat.send("first question " + "context " * 300)
    reply = chat.send("second question")
    price = price_for(SONNET)
    assert price is not None and price.cache_read == pytest.approx(price.input * 0.1)
    expected = (100 * 3.0 + 10 * 15.0 + 2000 * 3.75 + 10_000 * 0.30) / 1_000_000
    assert reply.cost_usd == pytest.approx(expected)
    assert chat.cost().cost_usd == pytest.approx(2 * expected)
    # Without cache pricing the same 12,100 prompt tokens would cost about 3x as much.
    assert 12_100 * 3.0 / 1_000_000 > 2.9 * (expected - 10 * 15.0 / 1_000_000)
    sent = model.last_request.to_anthropic()
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
