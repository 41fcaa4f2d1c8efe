"""Composing a context from parts under one token budget.

Why a composite: each memory mechanism alone is either blind (a window forgets what scrolled out)
or expensive (the full log). Together they cover each other: facts carry what is true about the
user, a summary carries the gist of older turns, recalled excerpts carry the older turns that
matter to the current message, and the newest turns stay verbatim. They must share one budget,
so the composite hands each contributor a token allowance in a stated priority order and checks
what it returns.

The contract for contributors (also implemented by recall, in context/recall.py):

* :class:`ContextPart` renders *system blocks* placed after the byte-stable persona block, in the
  order the parts are listed (so a changed fact or summary never invalidates the cached persona);
* :class:`RecentWindow` chooses where the verbatim recent turns begin (context/cache.py gives a
  cache-aware one that trims in steps);
* :class:`MessageTransform` rewrites the final message list (e.g. tool-output pruning), keeping
  its length and its tool_use/tool_result pairs.

Priority order (default, highest first)::

    newest turn  >  facts  >  recent turns  >  summary  >  recall  >  older recent turns
    (always)        (part)    ("recent")       (part)      (part)     ("window")

Each stage gets ``min(its cap + what earlier stages left unused of theirs, what is left)``. "recent" is the verbatim window chosen by
``recent`` within its cap (at least ``min_recent_turns`` turns when they fit the budget);
"window" then extends the verbatim window backwards with whatever budget is left, stopping at the
first older turn that a part already carries (no turn is sent twice). Parts ranked above
"recent" are rendered before the window is known and receive the provisional start of the
``min_recent_turns`` newest turns; they should not depend on it (facts do not).

Derived records (``PartResult.derived``) are collected into ``Context.derived``; the engine
persists each one after the turn by calling its ``persist(store)`` method.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError, InvalidConversationError
from ..messages import Message, TextBlock, ToolResultBlock
from ..tokens import estimate_message, estimate_messages, estimate_text, estimate_tools
from .base import Context, ContextInput, iter_turns_backwards, persona_blocks, turn_start_index


@dataclass
class PartResult:
    """What one part contributes."""

    #: System blocks, placed after the persona in part order.
    blocks: list[TextBlock] = field(default_factory=list)
    #: Stored seqs this part carries (a summary's covered range, recalled turns, facts' sources).
    sources: list[int] = field(default_factory=list)
    #: Records for the engine to persist (each has ``persist(store)``).
    derived: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Calibrated token estimate of ``blocks`` and ``tail`` (the composite re-checks it).
    tokens: int = 0
    #: Per-turn blocks that go at the start of the newest user message whatever the part's
    #: placement (e.g. facts learned since the cached facts block), so the cached system
    #: prompt and history stay byte-stable.
    tail: list[TextBlock] = field(default_factory=list)
    #: Uncalibrated estimate of ``blocks`` and ``tail`` when the part computed one (recall adds
    #: it up from its excerpts' cached counts, where estimating its whole block again cost ~4 ms
    #: a turn); None: the composite estimates the blocks.
    raw: int | None = None
    #: Ids of the derived records the blocks show (facts, a summary): kept with the reply so
    #: what the model saw can be shown again (colloquy.context.seen).
    records: list[str] = field(default_factory=list)


@runtime_checkable
class ContextPart(Protocol):
    """A contributor to a composed context, e.g. facts, summary, recalled excerpts."""

    name: str
    # Optional attribute ``covers_turns`` (default True): the part's sources stand in for those
    # turns (summary, recall), so the verbatim window does not repeat them. Facts set it False:
    # a fact learnt at seq 5 does not make turn 5 redundant.
    # Optional attribute ``needs_window`` (default False): with ``stable_window``, a part ranked
    # above "recent" keeps its place in the budget but is rendered once the window is known,
    # and receives its real start (stable facts split their block there).

    def render(self, inp: ContextInput, window_start: int, budget: int) -> PartResult:
        """``window_start``: index in ``inp.history`` where the verbatim recent turns begin
        (parts that cover older turns, like summary and recall, look only at
        ``inp.history[:window_start]``); ``budget``: the most tokens (calibrated estimate) this
        part may use."""
        ...


@runtime_checkable
class MessageTransform(Protocol):
    """Rewrites the final message list, e.g. tool-output pruning. Must return as many messages
    as it was given (``sources[i]`` stays the provenance of message ``i``) and keep every
    tool_use/tool_result pair valid."""

    def apply(
        self, messages: list[Message], sources: list[list[int]], inp: ContextInput
    ) -> list[Message]: ...


@runtime_checkable
class RecentWindow(Protocol):
    """Chooses where the verbatim recent turns begin."""

    def window_start(self, inp: ContextInput, budget: int) -> int:
        """An index into ``inp.history`` at a turn start (or 0) such that
        ``inp.history[start:]`` fits in ``budget`` calibrated tokens (the newest turn may be
        over on its own; the composite handles that)."""
        ...


@dataclass(frozen=True)
class RecentTurns:
    """The newest whole turns that fit the budget, at most ``turns`` of them (None: no cap).

    Shifts by one turn per turn; context/cache.py has a step-wise, cache-friendly alternative.
    """

    turns: int | None = None

    def window_start(self, inp: ContextInput, budget: int) -> int:
        scale = inp.counter.factor(inp.model)
        used = 0
        start = len(inp.history)
        for n, (lo, hi) in enumerate(iter_turns_backwards(inp.history), start=1):
            if self.turns is not None and n > self.turns:
                break
            cost = sum(estimate_message(sm.message) for sm in inp.history[lo:hi])
            if math.ceil((used + cost) * scale) > budget and start < len(inp.history):
                break
            used += cost
            start = lo
        return start


#: Default caps per stage: a float <= 1 is a share of the *shared* budget, an int is tokens. The
#: shared budget is ``max_input_tokens`` less what every request holds whatever the stages do:
#: the persona, the tool definitions and the newest turn (they are counted first). Shares of
#: the whole budget would promise the stages more than is left, so the last ones (a summary,
#: recall) lost their share whenever the persona or the message was long, while the turns they
#: stand for had already been pushed out of the window. Compaction elsewhere sizes its shares
#: the same way: the Microsoft Agent Framework's thresholds are fractions of the input budget
#: with system messages and tools in it (ContextWindowCompactionStrategy).
DEFAULT_CAPS: dict[str, float | int] = {
    "facts": 0.15,
    "recent": 0.35,
    "summary": 0.25,
    "recall": 0.35,
}
#: The cap of a part with a name not listed in the caps.
DEFAULT_PART_CAP = 0.25
#: Default priority of the stages; parts not named here go just before "window".
DEFAULT_PRIORITY: tuple[str, ...] = ("facts", "recent", "summary", "recall", "window")


class _Turns:
    """Turn spans of the history, newest first, measured lazily (raw tokens): the cost of a
    turn depends on how far back the composite looks, not on the log's length."""

    def __init__(self, inp: ContextInput) -> None:
        self._inp = inp
        self._it: Iterator[tuple[int, int]] = iter_turns_backwards(inp.history)
        self.spans: list[tuple[int, int, int]] = []  # (lo, hi, raw cost)

    def get(self, k: int) -> tuple[int, int, int] | None:
        while len(self.spans) <= k:
            nxt = next(self._it, None)
            if nxt is None:
                return None
            lo, hi = nxt
            cost = estimate_messages([sm.message for sm in self._inp.history[lo:hi]])
            self.spans.append((lo, hi, cost))
        return self.spans[k]

    def index_of_start(self, start: int) -> int:
        """How many turns (newest first) ``history[start:]`` holds."""
        k = 0
        while True:
            span = self.get(k)
            if span is None or span[0] < start:
                return k
            k += 1


@dataclass
class ComposedPolicy:
    """Facts, summary, recalled excerpts and the recent verbatim turns under one budget.

    ``ComposedPolicy(4000, parts=[FactsPart(), SummaryPart(), RecallPart()],
    recent=RecentTurns(), transforms=[ToolOutputPruning()])``. See the module docstring for
    the priority order; ``priority`` and ``caps`` override it (stage names: the parts' names,
    "recent" and "window").
    """

    max_input_tokens: int
    parts: Sequence[ContextPart] = ()
    recent: RecentWindow = field(default_factory=RecentTurns)
    transforms: Sequence[MessageTransform] = ()
    min_recent_turns: int = 1
    priority: Sequence[str] | None = None
    caps: Mapping[str, float | int] | None = None
    #: Where each part's blocks go: "system" (default, after the persona) or "user" (at the
    #: start of the newest user message, after any tool results), which keeps the system
    #: prompt and the replayed history byte-stable for prompt caching when a part changes
    #: every turn (recall).
    placement: Mapping[str, str] | None = None
    #: For prompt caching (with a stepped ``recent`` such as cache.SteppedWindow): the window
    #: gets exactly its cap (nothing spills into it) and is never extended with leftovers, so
    #: its start moves only when the stepped strategy trims.
    stable_window: bool = False

    def __post_init__(self) -> None:
        if self.max_input_tokens < 1:
            raise ConfigError(f"max_input_tokens must be positive, not {self.max_input_tokens}")
        if self.min_recent_turns < 1:
            raise ConfigError(f"min_recent_turns must be at least 1, not {self.min_recent_turns}")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ConfigError(f"context parts need distinct names, got {names}")
        for n in names:
            if n in {"recent", "window", "newest"}:
                raise ConfigError(f"{n!r} is a reserved stage name, not a part name")
        self.stages: list[str] = self._stages(names)
        for part_name, where in (self.placement or {}).items():
            if part_name not in names or where not in ("system", "user"):
                raise ConfigError(f"placement {part_name!r}: {where!r}: name a part and say "
                                  "'system' or 'user'")

    def _stages(self, names: list[str]) -> list[str]:
        base = list(self.priority) if self.priority is not None else list(DEFAULT_PRIORITY)
        unknown = [s for s in base if s not in names and s not in {"recent", "window"}]
        if self.priority is not None and unknown:
            raise ConfigError(f"priority names unknown stages {unknown}; parts are {names}")
        stages = [s for s in base if s in names or s in {"recent", "window"}]
        for s in ("recent", "window"):
            if s not in stages:
                stages.append(s)
        missing = [n for n in names if n not in stages]
        at = stages.index("window")
        return stages[:at] + missing + stages[at:]

    def cap(self, stage: str, shared: int | None = None) -> int:
        """The most tokens ``stage`` may take (before what is left is considered): its share of
        ``shared`` tokens (the budget less the persona, tools and newest turn; default: the
        whole ``max_input_tokens``), or its fixed number of tokens."""
        caps = {**DEFAULT_CAPS, **(self.caps or {})}
        value = caps.get(stage, DEFAULT_PART_CAP)
        if isinstance(value, float) and value <= 1.0:
            return int((self.max_input_tokens if shared is None else shared) * value)
        return int(value)

    # -- building ------------------------------------------------------------------------------

    def build(self, inp: ContextInput) -> Context:
        history = inp.history
        limit = self.max_input_tokens
        scale = inp.counter.factor(inp.model)

        def cal(raw: int) -> int:
            return math.ceil(raw * scale)

        notes: list[str] = []
        turns = _Turns(inp)
        persona = persona_blocks(inp.system)
        used = inp.counter.raw(persona, (), extra=estimate_tools(inp.tools))  # raw tokens

        # 1. The newest turn, always.
        newest = turns.get(0)
        start = newest[0] if newest else len(history)
        if newest:
            used += newest[2]
        if cal(used) > limit:
            notes.append(f"the newest turn alone (~{cal(used)} tokens) is over the "
                         f"{limit}-token budget; sending it anyway")
        provisional = turn_start_index(history, self.min_recent_turns) if history else 0
        shared = max(0, limit - cal(used))  # what the stages' shares divide (see DEFAULT_CAPS)

        results: dict[str, PartResult] = {}
        carried: set[int] = set()
        window_known = False
        by_name = {p.name: p for p in self.parts}

        spill = 0  # allowance a stage left unused passes to the next one
        deferred: list[tuple[str, int]] = []  # (stage, budget) of parts waiting for the window
        reserved = 0  # their budgets, held while the window is chosen
        for stage in self.stages:
            left = limit - cal(used) - reserved
            if stage == "recent":
                before = cal(used)
                start, used = self._recent(inp, turns, start, used, cal, limit - reserved,
                                           0 if self.stable_window else spill, shared)
                spill = max(0, self.cap("recent", shared) + spill - (cal(used) - before))
                window_known = True
                for name, budget in deferred:  # render them now, in the budget they held
                    reserved -= budget
                    budget = max(0, min(budget, limit - cal(used) - reserved))
                    used, spill_part = self._render_part(
                        by_name[name], name, inp, start, budget, used, cal, limit, notes,
                        results, carried)
                    spill += spill_part  # what it left unused passes down, as before
                deferred = []
            elif stage == "window":
                if self.stable_window:
                    continue
                start, used = self._extend(turns, start, used, cal, limit, carried, history)
            else:
                part = by_name[stage]
                budget = max(0, min(self.cap(stage, shared) + spill, left))
                if not window_known and self.stable_window and getattr(part, "needs_window", False):
                    deferred.append((stage, budget))
                    reserved += budget
                    spill = 0
                    continue
                used, spill = self._render_part(
                    part, stage, inp, start if window_known else provisional, budget, used, cal,
                    limit, notes, results, carried)

        # Assemble: persona, then part blocks in part order, then the verbatim turns.
        system = list(persona)
        tail: list[TextBlock] = []
        derived: list[Any] = []
        part_sources: dict[str, list[int]] = {}
        part_tokens: dict[str, int] = {}
        part_records: dict[str, list[str]] = {}
        for part in self.parts:
            res = results.get(part.name) or PartResult()
            if (self.placement or {}).get(part.name, "system") == "user":
                tail.extend(res.blocks)
            else:
                system.extend(res.blocks)
            tail.extend(res.tail)
            derived.extend(res.derived)
            notes.extend(n if n.startswith(f"{part.name}:") else f"{part.name}: {n}" for n in res.notes)
            if res.blocks or res.tail:
                part_sources[part.name] = list(res.sources)
                part_tokens[part.name] = res.tokens
                part_records[part.name] = list(res.records)
        kept = history[start:]
        messages = [sm.message for sm in kept]
        sources = [[sm.seq] for sm in kept]
        for t in self.transforms:
            out = t.apply(messages, sources, inp)
            if len(out) != len(messages):
                raise InvalidConversationError(
                    f"{type(t).__name__} returned {len(out)} messages for {len(messages)}: a "
                    "message transform must rewrite messages in place, not add or drop them"
                )
            messages = list(out)
        if tail:
            # Into the newest user message (tool results must stay first); a log that ends with
            # a reply (a preview of the stored log) has none after it: use the system prompt.
            at = next((i for i in range(len(messages) - 1, -1, -1)
                       if messages[i].role == "user"), None)
            if at is None or at != len(messages) - 1:
                system.extend(tail)
                tail = []
            else:
                last = messages[at]
                results_first = [b for b in last.content if isinstance(b, ToolResultBlock)]
                rest = [b for b in last.content if not isinstance(b, ToolResultBlock)]
                messages[at] = Message.rebuilt("user", [*results_first, *tail, *rest])
        return Context(system=system, messages=messages, sources=sources, notes=notes,
                       derived=derived, part_sources=part_sources, part_tokens=part_tokens,
                       part_records=part_records, volatile_last=bool(tail))

    def _render_part(
        self, part: ContextPart, stage: str, inp: ContextInput, window_start: int, budget: int,
        used: int, cal: Any, limit: int, notes: list[str], results: dict[str, PartResult],
        carried: set[int],
    ) -> tuple[int, int]:
        """Render one part within ``budget``; returns (raw tokens used so far, unused budget)."""
        res = part.render(inp, window_start, budget)
        raw = res.raw if res.raw is not None else sum(
            estimate_text(b.text) for b in [*res.blocks, *res.tail])
        res.tokens = cal(raw)
        if (res.blocks or res.tail) and (res.tokens > budget or cal(used + raw) > limit):
            notes.append(f"{stage}: left out, its ~{res.tokens} tokens are over its "
                         f"{budget}-token allowance")
            res = PartResult(derived=res.derived, notes=res.notes)
            spill = budget
        else:
            spill = max(0, budget - res.tokens)
            used += raw
            if getattr(part, "covers_turns", True):
                carried.update(res.sources)
        results[stage] = res
        return used, spill

    def _recent(
        self, inp: ContextInput, turns: _Turns, start: int, used: int, cal: Any, limit: int,
        spill: int = 0, shared: int | None = None,
    ) -> tuple[int, int]:
        """The verbatim window: ``recent``'s choice within the "recent" cap, clamped to the
        budget, then grown to ``min_recent_turns`` turns if they fit."""
        newest = turns.get(0)
        if newest is None:
            return start, used
        base = used - newest[2]  # raw tokens without any turn
        allowance = cal(newest[2]) + max(0, min(self.cap("recent", shared) + spill,
                                                limit - cal(used)))
        chosen = min(self.recent.window_start(inp, allowance), start)
        if chosen <= 0:
            # The whole log chosen (the usual case while it fits): when all of it fits, that is
            # the answer the clamp below reaches (every turn kept; the oldest starts at 0),
            # without walking the log turn by turn on every turn.
            whole = estimate_messages([sm.message for sm in inp.history])
            if cal(base + whole) <= limit and cal(whole) <= allowance:
                return 0, base + whole
        n = turns.index_of_start(chosen)
        # Clamp to the budget: drop the oldest chosen turns until the window fits.
        while n > 1:
            cost = sum(turns.spans[k][2] for k in range(n))
            if cal(base + cost) <= limit and cal(cost) <= allowance:
                break
            n -= 1
        n = max(n, 1)
        # Grow to the guaranteed minimum while the whole budget allows.
        while n < self.min_recent_turns:
            span = turns.get(n)
            cost = sum(turns.spans[k][2] for k in range(n))
            if span is None or cal(base + cost + span[2]) > limit:
                break
            n += 1
        cost = sum(turns.spans[k][2] for k in range(n))
        return turns.spans[n - 1][0], base + cost

    def _extend(
        self, turns: _Turns, start: int, used: int, cal: Any, limit: int, carried: set[int],
        history: Sequence[Any],
    ) -> tuple[int, int]:
        """Older recent turns: grow the window backwards while the budget allows, stopping at a
        turn that a part already carries."""
        k = turns.index_of_start(start)
        while True:
            span = turns.get(k)
            if span is None:
                break
            lo, hi, cost = span
            if cal(used + cost) > limit:
                break
            if any(sm.seq in carried for sm in history[lo:hi]):
                break
            used += cost
            start = lo
            k += 1
        return start, used


__all__ = [
    "DEFAULT_CAPS",
    "DEFAULT_PRIORITY",
    "ComposedPolicy",
    "ContextPart",
    "MessageTransform",
    "PartResult",
    "RecentTurns",
    "RecentWindow",
]
