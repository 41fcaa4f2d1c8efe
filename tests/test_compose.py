"""The composite policy: parts, the verbatim window and message transforms under one token
budget, in the stated priority order, always producing a request the API accepts."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from colloquy import Chat
from colloquy.context import ContextInput, problems
from colloquy.context.base import turn_start_index
from colloquy.context.compose import (
    ComposedPolicy,
    ContextPart,
    MessageTransform,
    PartResult,
    RecentTurns,
)
from colloquy.context.facts import FactsPart
from colloquy.context.summary import Summariser, SummaryPart
from colloquy.errors import ConfigError, InvalidConversationError
from colloquy.memory import Fact
from colloquy.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.models import EchoModel, ScriptedModel
from colloquy.store import MemoryStore
from colloquy.tokens import TokenCounter, estimate_tools

from conftest import stored

PERSONA = "You are a helpful assistant who remembers things."


@dataclass
class Filler:
    """A part that fills its whole allowance (or a fixed size) with one block, like a greedy
    recall would; it records the window start and budget it was given."""

    name: str
    size: int | None = None
    covers: list[int] | None = None

    def __post_init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def render(self, inp: ContextInput, window_start: int, budget: int) -> PartResult:
        self.calls.append((window_start, budget))
        words = (self.size if self.size is not None else budget) * 3 // 4 - 4
        if words <= 0:
            return PartResult()
        text = f"[{self.name}] " + " ".join(["w"] * max(1, words))
        while self.size is None and inp.counter.count(inp.model, [TextBlock(text=text)]) - 8 > budget and words > 1:
            words -= 1
            text = f"[{self.name}] " + " ".join(["w"] * words)
        return PartResult(blocks=[TextBlock(text=text)], sources=list(self.covers or []))


def conversation(turns: int, seed: int = 0, tools: bool = True) -> list[Message]:
    rnd = random.Random(seed)
    msgs: list[Message] = []
    for t in range(turns):
        msgs.append(Message.user(f"turn {t}: " + "word " * rnd.randint(3, 60)))
        if tools and rnd.random() < 0.3:
            for r in range(rnd.randint(1, 2)):
                uid = f"tu_{t}_{r}"
                msgs.append(Message(role="assistant", content=[ToolUseBlock(id=uid, name="search", input={"q": t})]))
                msgs.append(Message(role="user", content=[ToolResultBlock(tool_use_id=uid, content="result " * rnd.randint(1, 80))]))
        msgs.append(Message.assistant(f"answer {t}: " + "text " * rnd.randint(3, 60)))
    msgs.append(Message.user("the newest question about turn 3"))
    return msgs


def total_tokens(ctx: object, inp: ContextInput) -> int:
    return inp.counter.count(inp.model, ctx.system, ctx.messages, extra=estimate_tools(inp.tools))  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("budget", [300, 800, 2000])
def test_budget_respected_and_pair_safe(seed: int, budget: int) -> None:
    counter = TokenCounter()
    counter.calibrate("m", 100, 130)  # a calibrated model: the budget is in its tokens
    history = stored(conversation(40, seed))
    inp = ContextInput(history=history, system=PERSONA, model="m", counter=counter)
    policy = ComposedPolicy(budget, parts=[Filler("facts"), Filler("summary"), Filler("recall")],
                            min_recent_turns=2)
    ctx = policy.build(inp)
    assert problems(ctx.messages) == []
    assert ctx.messages[0].starts_turn  # a user's own words, never a stray tool_result
    assert ctx.messages[-1].text == "the newest question about turn 3"
    assert total_tokens(ctx, inp) <= budget
    assert ctx.system[0].text == PERSONA
    # The verbatim window is a contiguous tail of the log.
    seqs = [s for group in ctx.sources for s in group]
    assert seqs == list(range(seqs[0], len(history) + 1))


def test_priority_order_under_a_tight_budget() -> None:
    """Sweeping the budget up, stages come in priority order: facts, then summary, then recall
    (each part has a fixed size, so it either fits its allowance or is left out)."""
    counter = TokenCounter()
    history = stored(conversation(30, 1, tools=False))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    seen: list[list[str]] = []
    for budget in range(20, 1500, 10):
        parts = [Filler("facts", size=200), Filler("summary", size=200), Filler("recall", size=200)]
        ctx = ComposedPolicy(budget, parts=parts, caps={"recent": 60, "facts": 300, "summary": 300,
                                                        "recall": 300}).build(inp)
        labels = [b.text.split("]")[0] + "]" for b in ctx.system[1:]]
        assert labels == ["[facts]", "[summary]", "[recall]"][: len(labels)], (budget, labels)
        if not any("newest turn alone" in n for n in ctx.notes):
            assert total_tokens(ctx, inp) <= budget
        if labels != ["[facts]", "[summary]", "[recall]"]:
            assert any("left out" in n for n in ctx.notes)
        if not seen or seen[-1] != labels:
            seen.append(labels)
    assert seen == [[], ["[facts]"], ["[facts]", "[summary]"], ["[facts]", "[summary]", "[recall]"]]


def test_the_newest_turn_always_comes_first() -> None:
    counter = TokenCounter()
    history = stored([Message.user("old"), Message.assistant("reply"),
                      Message.user("a very long newest question " * 100)])
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    facts = Filler("facts")
    ctx = ComposedPolicy(100, parts=[facts]).build(inp)
    assert [m.text[:12] for m in ctx.messages] == ["a very long "]
    assert facts.calls[-1][1] == 0 and len(ctx.system) == 1
    assert any("newest turn alone" in n for n in ctx.notes)


def test_parts_placed_in_part_order_after_the_persona_and_stages_in_priority_order() -> None:
    counter = TokenCounter()
    history = stored(conversation(10, 2, tools=False))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    recall, summary, facts = Filler("recall", 20), Filler("summary", 20), Filler("facts", 20)
    policy = ComposedPolicy(3000, parts=[facts, summary, recall], recent=RecentTurns(turns=3))
    assert policy.stages == ["facts", "recent", "summary", "recall", "window"]
    ctx = policy.build(inp)
    assert [b.text.split("]")[0] for b in ctx.system[1:]] == ["[facts", "[summary", "[recall"]
    # Facts (above "recent") get the provisional window start; summary and recall the real one.
    assert facts.calls[-1][0] == turn_start_index(history, 1)  # min_recent_turns = 1
    assert summary.calls[-1][0] == recall.calls[-1][0] == turn_start_index(history, 3)
    user_turns = [m for m in ctx.messages if m.role == "user"]
    assert len(user_turns) >= 3
    with pytest.raises(ConfigError):
        ComposedPolicy(100, parts=[Filler("x"), Filler("x")])
    with pytest.raises(ConfigError):
        ComposedPolicy(100, parts=[Filler("x")], priority=["nope"])
    custom = ComposedPolicy(100, parts=[facts, recall], priority=["recall", "recent", "facts"])
    assert custom.stages == ["recall", "recent", "facts", "window"]


def test_window_extension_stops_at_turns_a_part_carries() -> None:
    counter = TokenCounter()
    history = stored(conversation(10, 3, tools=False))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    carried = list(range(1, 11))  # seqs 1-10: the first five turns
    ctx = ComposedPolicy(10_000, parts=[Filler("summary", 30, covers=carried)],
                         recent=RecentTurns(turns=2)).build(inp)
    assert min(ctx.included_seqs) == 11  # everything after the summary, nothing twice
    assert ctx.part_sources == {"summary": carried}
    # Facts do not stand in for turns: the window still takes everything.
    store = MemoryStore()
    store.add_fact(Fact(user_id="u", subject="x", statement="likes tea", source_conversation="c_test", source_seq=3))
    inp = ContextInput(history=history, system=PERSONA, counter=counter, user_id="u", store=store,
                       conversation_id="c_test")
    ctx = ComposedPolicy(10_000, parts=[FactsPart()], recent=RecentTurns(turns=2)).build(inp)
    assert min(ctx.included_seqs) == 1 and ctx.part_sources == {"facts": [3]}


def test_min_recent_turns_and_the_recent_cap() -> None:
    counter = TokenCounter()
    history = stored(conversation(20, 4, tools=False))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    ctx = ComposedPolicy(3000, parts=[Filler("summary", covers=[1])], recent=RecentTurns(turns=1),
                         min_recent_turns=4).build(inp)
    assert sum(1 for m in ctx.messages if m.role == "user") >= 4


@dataclass
class Shout:
    """A message transform (what tool-output pruning implements): upper-cases assistant text."""

    def apply(self, messages: list[Message], sources: list[list[int]], inp: ContextInput) -> list[Message]:
        return [Message.assistant(m.text.upper()) if m.role == "assistant" and not m.tool_uses else m
                for m in messages]


@dataclass
class Dropper:
    def apply(self, messages: list[Message], sources: list[list[int]], inp: ContextInput) -> list[Message]:
        return messages[1:]


def test_transforms_rewrite_the_final_messages_in_place() -> None:
    counter = TokenCounter()
    history = stored(conversation(5, 5, tools=False))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    assert isinstance(Shout(), MessageTransform) and isinstance(Filler("f"), ContextPart)
    ctx = ComposedPolicy(5000, transforms=[Shout()]).build(inp)
    assert all(m.text == m.text.upper() for m in ctx.messages if m.role == "assistant")
    assert len(ctx.sources) == len(ctx.messages)
    with pytest.raises(InvalidConversationError, match="must rewrite messages in place"):
        ComposedPolicy(5000, transforms=[Dropper()]).build(inp)


def test_a_part_over_its_allowance_is_left_out() -> None:
    @dataclass
    class Greedy:
        name: str = "recall"

        def render(self, inp: ContextInput, window_start: int, budget: int) -> PartResult:
            return PartResult(blocks=[TextBlock(text="x " * (budget * 4))], derived=["kept"])

    counter = TokenCounter()
    inp = ContextInput(history=stored(conversation(5, 6, tools=False)), system=PERSONA, counter=counter)
    ctx = ComposedPolicy(2000, parts=[Greedy()]).build(inp)
    assert len(ctx.system) == 1 and any("recall: left out" in n for n in ctx.notes)
    assert ctx.derived == ["kept"]  # derived records still reach the engine


def test_memory_composite_in_a_chat_end_to_end(counter: TokenCounter) -> None:
    """Facts + summary + recent turns under one budget through the engine."""
    store = MemoryStore()
    store.add_fact(Fact(user_id="ana", subject="home", statement="lives in Lisbon"))
    echo = EchoModel()
    summariser = ScriptedModel([f"- summary {i}" for i in range(50)])
    policy = ComposedPolicy(
        700, parts=[FactsPart(), SummaryPart(Summariser(summariser), min_new_turns=3)],
        recent=RecentTurns(turns=3), min_recent_turns=2)
    chat = Chat(echo, system=PERSONA, store=store, session_id="s", user_id="ana", policy=policy,
                counter=counter)
    for i in range(15):
        chat.send(f"message {i} " + "detail " * 20)
        request = echo.last_request
        assert problems(request.messages) == []
        assert request.system[0].text == PERSONA
        assert counter.count("echo", request.system, request.messages) <= 700
    texts = [b.text for b in echo.last_request.system]
    assert texts[1].startswith("<user_facts>") and texts[2].startswith("<conversation_summary")
    assert store.list_summaries("s")


def test_unused_allowance_passes_down_the_priority_order() -> None:
    counter = TokenCounter()
    history = stored(conversation(20, 7, tools=False))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    empty, recall = Filler("facts", size=0), Filler("recall")
    ComposedPolicy(2000, parts=[empty, recall], recent=RecentTurns(turns=1),
                   caps={"facts": 300, "recent": 100, "recall": 400}).build(inp)
    # recall gets its own 400, the 300 facts left, and the 100 of a window that could not grow
    # past the newest turn (which is always there, outside any allowance).
    assert recall.calls[-1][1] == 800


def test_named_policies_and_config() -> None:
    from colloquy.context import make_policy
    from colloquy.context.policies import FullHistory, RollingWindow, TokenBudget
    from colloquy.context.presets import PRESETS, preset

    from colloquy.context.default import DefaultPolicy

    assert isinstance(make_policy("window", window=3), RollingWindow)
    assert isinstance(make_policy("budget", max_input_tokens=500), TokenBudget)
    # No name: the default policy (what a chat uses without one), fitted or with a budget.
    assert isinstance(make_policy(None), DefaultPolicy) and make_policy(None).max_input_tokens is None
    fixed = make_policy("default", max_input_tokens=4000, config={"recall": {"retriever": "bm25"}})
    assert isinstance(fixed, DefaultPolicy) and (fixed.max_input_tokens, fixed.retriever) == (4000, "bm25")
    assert isinstance(make_policy("full"), FullHistory)
    memory = make_policy("memory", max_input_tokens=3000, chat_model="echo")
    assert isinstance(memory, ComposedPolicy) and memory.max_input_tokens == 3000
    assert [p.name for p in memory.parts] == ["facts", "summary", "recall"]
    assert memory.stages == ["facts", "recent", "summary", "recall", "window"]
    assert len(memory.transforms) == 1  # tool-output pruning
    summary = memory.parts[1]
    assert isinstance(summary, SummaryPart) and summary.summariser.model_name == "offline-summariser"
    real = make_policy("summary", chat_model="claude-sonnet-4-6")
    assert real.parts[0].summariser.model_name == "claude-haiku-4-5"  # type: ignore[attr-defined]
    tuned = make_policy(None, config={"policy": "summary", "max_input_tokens": 1200, "window": 4,
                                      "caps": {"summary": 0.5}, "min_recent_turns": 2,
                                      "summary": {"model": "offline-summariser", "min_new_turns": 3}})
    assert isinstance(tuned, ComposedPolicy) and tuned.cap("summary") == 600
    assert tuned.min_recent_turns == 2 and tuned.parts[0].min_new_turns == 3  # type: ignore[attr-defined]
    assert tuned.recent == RecentTurns(turns=4)
    with pytest.raises(ConfigError, match="unknown policy"):
        make_policy("nope")
    with pytest.raises(ConfigError, match=r"bad \[summary\] options"):
        make_policy("summary", config={"summary": {"bogus": 1}})
    assert set(PRESETS) == {"default", "window", "budget", "full", "summary", "facts", "recall",
                            "memory"}
    bench = preset("summary", max_input_tokens=900)
    assert bench.parts[0].summariser.model_name == "offline-summariser"  # type: ignore[attr-defined]


def test_user_placement_keeps_the_system_prompt_stable() -> None:
    counter = TokenCounter()
    history = stored(conversation(12, 8))
    inp = ContextInput(history=history, system=PERSONA, counter=counter)
    facts, recall = Filler("facts", 30), Filler("recall", 30, covers=[1])
    ctx = ComposedPolicy(3000, parts=[facts, recall], placement={"recall": "user"}).build(inp)
    assert [b.text.split("]")[0] for b in ctx.system] == [PERSONA.split("]")[0], "[facts"]
    last = ctx.messages[-1]
    assert last.content[0].text.startswith("[recall]")  # type: ignore[union-attr]
    assert last.content[-1].text == "the newest question about turn 3"  # type: ignore[union-attr]
    assert problems(ctx.messages) == []
    # A log that ends with a reply (a preview): the blocks go to the system prompt instead.
    ended = ContextInput(history=history[:-1], system=PERSONA, counter=counter)
    ctx = ComposedPolicy(3000, parts=[facts, recall], placement={"recall": "user"}).build(ended)
    assert [b.text.split("]")[0] for b in ctx.system[1:]] == ["[facts", "[recall"]
    assert all(not b.text.startswith("[recall]") for m in ctx.messages for b in m.content
               if isinstance(b, TextBlock))
    with pytest.raises(ConfigError):
        ComposedPolicy(100, parts=[facts], placement={"facts": "middle"})


def test_the_cache_aware_memory_preset_trims_in_steps() -> None:
    from colloquy.context import make_policy

    history = stored(conversation(150, 9, tools=False))
    policy = make_policy("memory", max_input_tokens=3000, chat_model="claude-sonnet-4-6",
                         config={"summary": {"model": "offline-summariser"}})
    starts = []
    for n in range(201, len(history) + 1, 2):
        if not history[n - 1].message.starts_turn:
            continue
        inp = ContextInput(history=history[:n], system=PERSONA, model="claude-sonnet-4-6",
                           counter=TokenCounter(), conversation_id="c_test")
        ctx = policy.build(inp)
        assert problems(ctx.messages) == [] and total_tokens(ctx, inp) <= 3000
        assert ctx.system[0].text == PERSONA
        assert all(not b.text.startswith("Earlier excerpts") for b in ctx.system)  # recall: in the message
        starts.append(ctx.sources[0][0])
    moves = sum(1 for a, b in zip(starts, starts[1:]) if a != b)
    assert starts == sorted(starts) and 0 < moves <= len(starts) // 3  # stepped, not per turn


def test_the_memory_preset_with_tools_through_the_engine(counter: TokenCounter) -> None:
    """Facts, summary, recall, recent turns and tool-output pruning in one chat with tool rounds:
    every request is valid, within budget, with the persona first and old tool outputs stubbed."""
    from colloquy import tool, tool_call
    from colloquy.context import make_policy
    from colloquy.memory import FactExtraction, FactExtractor

    @tool
    def lookup(city: str) -> str:
        """Weather report for a city."""
        return f"Weather in {city}: " + "sunny and warm with light wind " * 40

    script: list[object] = []
    for i in range(12):
        script += [tool_call("lookup", {"city": f"City{i}"}), f"It is sunny in City{i}."]
    model = ScriptedModel(script)
    store = MemoryStore()
    policy = make_policy("memory", max_input_tokens=2500, chat_model="echo",
                         config={"pruning": {"keep_rounds": 2}, "summary": {"min_new_turns": 3}})
    chat = Chat(model, system=PERSONA, store=store, session_id="t", user_id="ana", tools=[lookup],
                policy=policy, counter=counter,
                extract_facts=FactExtraction(FactExtractor("offline-facts")))
    for i in range(12):
        chat.send(f"I live in City{i}. What's the weather in City{i}?")
    for request in model.requests:
        assert problems(request.messages) == []
        assert request.system[0].text == PERSONA
        assert counter.count("scripted", request.system, request.messages,
                             extra=estimate_tools(request.tools)) <= 2500
    last = model.requests[-1]
    results = [b for m in last.messages for b in m.tool_results]
    assert results and len(results[-1].text) > 1000  # the newest tool output is whole
    assert all(len(r.text) < 1000 for r in results[:-2])  # older ones are stubs
    assert [f.statement for f in store.list_facts("ana")] == ["lives in City11"]
    assert len(store.list_facts("ana", include_retired=True)) == 12
    assert store.list_summaries("t")
    assert len(store.load("t")) == 12 * 4  # user, tool call, tool result, answer: all kept
