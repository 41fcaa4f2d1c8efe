"""Fitting recall's fusion weights on LoCoMo, and checking that they hold on unseen conversations.

Used by bench/memory.py (its ``tune`` section, on by default). For each question and budget, the
recall part's candidates and their signals are computed once with the library's own code
(``colloquy.context.fusion.fused_features``, on the index a ``RecallPolicy`` builds); a weight
vector is then scored by ranking as ``rank_by`` does (with numpy) and packing with
``RecallPart._pack`` (the very packing the policy uses), so trying a vector costs a dot product
and a packing per question.
Only the leftover-budget extension of the verbatim window is not replayed here (the main table's
rows are real policy builds).

Protocol: coordinate ascent of the mean "all 1-4" evidence recall at 4,000 and 8,000 tokens over
a grid per weight (the body weight fixed at 1: only ratios matter), from a fixed start, two
sweeps. **Held-out**: leave one conversation out: fit on four, measure on the fifth, pool the
five measured folds. **In-sample**: fit on all five, measure on all five. The shipped defaults
(``FusionWeights()``, ``RecallPart.neighbour_min``) are the in-sample fit, kept only if the
held-out figure stays close (the gap is printed).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from colloquy.context import ContextInput
from colloquy.context.compose import PartResult
from colloquy.context.fusion import FusionWeights, fused_features, rank_by
from colloquy.context.recall import RecallPart, RecallPolicy
from colloquy.messages import Message, StoredMessage

GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
NEIGHBOUR_GRID = (0.0, 0.3, 0.5, 0.7, 0.85, 1.01)
SIGNALS = [f.name for f in fields(FusionWeights)]


class _Probe(RecallPart):
    """A recall part that only records where the window starts and what budget it was given."""

    seen: tuple[int, int] = (0, 0)

    def render(self, inp: ContextInput, window_start: int, budget: int) -> PartResult:
        self.seen = (window_start, budget)
        return PartResult()


@dataclass
class Case:
    """One question at one budget: what the policy's window holds, and the recall candidates."""

    conv: str
    category: int
    budget: int
    evidence: set[int]
    window: set[int]
    before: int | None
    part_budget: int
    keys: list[int]
    rows: list[list[float]]
    index: Any = field(repr=False)
    inp: Any = field(repr=False)
    question: str = ""
    matrix: Any = field(default=None, repr=False)


@dataclass
class Setting:
    weights: FusionWeights
    neighbour_min: float

    def vector(self) -> list[float]:
        return [*self.weights.as_list(), self.neighbour_min]

    @staticmethod
    def of(vector: Sequence[float]) -> Setting:
        return Setting(FusionWeights(*vector[:-1]), vector[-1])


def prepare(convs: Sequence[Any], inp_for: Any, env_for: Any, budgets: Sequence[int],
            share: float, retriever: str) -> list[Case]:
    """Candidates and signals of every question (categories 1-4) at every budget."""
    cases: list[Case] = []
    for conv in convs:
        part = RecallPart(retriever, resume_chunk=0)  # the whole log at once: a fixed index
        last = conv.messages[-1]
        env = env_for(conv)
        for q in conv.questions:
            if q.category not in (1, 2, 3, 4):
                continue
            qmsg = StoredMessage(conversation_id=conv.id, seq=last.seq + 1,
                                 created_at=last.created_at + 60, message=Message.user(q.text))
            history = [*conv.messages, qmsg]
            inp = inp_for(conv, history, env)
            evidence = {conv.seq_of[d] for d in q.evidence}
            for b in budgets:
                probe = _Probe(retriever)
                RecallPolicy(b, recall_share=share, part=probe).build(inp)
                start, part_budget = probe.seen
                idx = part.index_for(inp)
                idx.update(history, start)
                before = history[start].seq if start < len(history) else None
                keys, rows = fused_features(idx, idx.retriever, q.text, qmsg.created_at, before,
                                            part.depth, retriever != "bm25")
                cases.append(Case(conv.id, q.category, b, evidence,
                                  {sm.seq for sm in history[start:]}, before, part_budget, keys,
                                  rows, idx, inp, q.text))
    return cases


def hit(case: Case, setting: Setting, part: RecallPart, extra: float = 0.0) -> bool:
    need = case.evidence - case.window
    if not need:
        return True
    part.neighbour_min = setting.neighbour_min
    # rank_by's order, with numpy (the tuner ranks each case hundreds of times)
    w = setting.weights.as_list() + ([extra] if extra else [])
    matrix = case.matrix if case.matrix is not None else np.asarray(case.rows, dtype=float)
    case.matrix = matrix
    scores = matrix[:, :len(w)] @ np.asarray(w) if len(matrix) else np.zeros(0)
    order = np.lexsort((np.asarray(case.keys), -scores))
    hits = [(case.keys[i], float(scores[i])) for i in order if scores[i] > 0]
    chosen = part._pack(case.index, hits, case.before, case.part_budget, case.inp)
    return need <= {s for u in chosen for s in u.seqs}


def recall_of(cases: Sequence[Case], setting: Setting,
              extra: float = 0.0) -> dict[int, dict[int, list[bool]]]:
    """{budget: {category: [hit, ...]}}."""
    part = RecallPart("bm25")
    out: dict[int, dict[int, list[bool]]] = {}
    for c in cases:
        out.setdefault(c.budget, {}).setdefault(c.category, []).append(hit(c, setting, part, extra))
    return out


def overall(table: dict[int, list[bool]]) -> float:
    vals = [v for c in (1, 2, 3, 4) for v in table.get(c, [])]
    return sum(vals) / len(vals) if vals else float("nan")


def objective(cases: Sequence[Case], setting: Setting) -> float:
    r = recall_of(cases, setting)
    return sum(overall(t) for t in r.values()) / len(r)


def fit(cases: Sequence[Case], start: Setting, sweeps: int = 2,
        frozen: Sequence[str] = ()) -> tuple[Setting, float]:
    """Coordinate ascent from ``start`` (the body weight and ``frozen`` signals stay put)."""
    vec = start.vector()
    best = objective(cases, start)
    names = [*SIGNALS, "neighbour_min"]
    for _ in range(sweeps):
        changed = False
        for k, name in enumerate(names):
            if name == "body" or name in frozen:
                continue
            for g in NEIGHBOUR_GRID if name == "neighbour_min" else GRID:
                if g == vec[k]:
                    continue
                trial = [*vec[:k], g, *vec[k + 1:]]
                v = objective(cases, Setting.of(trial))
                if v > best + 1e-9:
                    best, vec, changed = v, trial, True
        if not changed:
            break
    return Setting.of(vec), best


@dataclass
class Study:
    """In-sample and held-out figures of one retriever mode."""

    mode: str
    in_sample: Setting
    folds: dict[str, Setting]
    rows: list[tuple[str, dict[int, dict[int, list[bool]]], dict[int, dict[int, list[bool]]]]]
    seconds: float


def pooled(cases: Sequence[Case], folds: dict[str, Setting], change: Any = None,
           extra: float = 0.0) -> dict[int, dict[int, list[bool]]]:
    """Each conversation measured with the setting fitted without it (``change`` applied)."""
    out: dict[int, dict[int, list[bool]]] = {}
    for conv, setting in folds.items():
        s = change(setting) if change else setting
        for b, table in recall_of([c for c in cases if c.conv == conv], s, extra).items():
            for cat, vals in table.items():
                out.setdefault(b, {}).setdefault(cat, []).extend(vals)
    return out


def study(cases: Sequence[Case], mode: str, start: Setting, frozen: Sequence[str] = ()) -> Study:
    t0 = time.perf_counter()
    convs = sorted({c.conv for c in cases})
    folds = {}
    for conv in convs:
        folds[conv], _ = fit([c for c in cases if c.conv != conv], start, frozen=frozen)
        print(f"  fitted {mode} without {conv}", file=sys.stderr)
    fitted, _ = fit(cases, start, frozen=frozen)
    rows = [("all signals", recall_of(cases, fitted), pooled(cases, folds))]
    # Variants: each signal left out (its weight 0), and neighbours always / never shown.
    for name in SIGNALS:
        if name == "body" or name in frozen or getattr(fitted.weights, name) == 0:
            continue

        def drop(s: Setting, name: str = name) -> Setting:
            return Setting(replace(s.weights, **{name: 0.0}), s.neighbour_min)

        rows.append((f"without {name}", recall_of(cases, drop(fitted)), pooled(cases, folds, drop)))
    for label, value in (("neighbours always", 0.0), ("neighbours never", 99.0)):

        def nb(s: Setting, value: float = value) -> Setting:
            return Setting(s.weights, value)

        rows.append((label, recall_of(cases, nb(fitted)), pooled(cases, folds, nb)))
    second = [with_second_round(c, fitted) for c in cases]
    # Held out: each conversation's second round follows the first round of its own fold.
    second_held = [with_second_round(c, folds[c.conv]) for c in cases]
    for w in (0.2, 0.5):
        rows.append((f"+2nd round, {w}", recall_of(second, fitted, w),
                     pooled(second_held, folds, None, w)))
    return Study(mode, fitted, folds, rows, time.perf_counter() - t0)


_NAME = re.compile(r"\b[A-Z][a-z]{2,}\b")
_COMMON = frozenset("user assistant hey thanks wow that the what yeah yes sounds it this "
                    "they there when how".split())


def with_second_round(case: Case, first: Setting, top: int = 5) -> Case:
    """A second retrieval round (tried, see the variants table): the capitalised names in the
    first round's ``top`` hits that the question does not contain become a BM25 query, whose
    scaled score is one more signal of weight ``w`` (see :func:`recall_of`)."""
    hits = rank_by(case.keys, case.rows, first.weights)[:top]
    asked = {w.lower() for w in re.findall(r"\w+", case.question)}
    names: list[str] = []
    for key, _ in hits:
        for w in _NAME.findall(case.index.units[key].text):
            lw = w.lower()
            if lw not in asked and lw not in _COMMON and lw not in names:
                names.append(lw)
    extra: dict[int, float] = {}
    if names:
        found = case.index.retriever.bm25.columns(" ".join(names[:10]), 300, case.before)
        top_score = max((b for _, b, _, _ in found), default=0.0)
        extra = {k: b / top_score for k, b, _, _ in found if top_score > 0}
    keys = sorted(set(case.keys) | set(extra))
    old = dict(zip(case.keys, case.rows))
    zero = [0.0] * len(SIGNALS)
    rows = [[*old.get(k, zero), extra.get(k, 0.0)] for k in keys]
    return replace(case, keys=keys, rows=rows, matrix=None)


def fmt(x: float) -> str:
    return "  -  " if x != x else f"{x:.3f}"


def print_study(s: Study, budgets: Sequence[int]) -> None:
    print(f"\nFusion weights for {s.mode!r}, fitted by coordinate ascent ({s.seconds:.0f} s): "
          "in-sample = fitted on all five conversations and measured on them; held-out = each "
          "conversation measured with the weights fitted on the other four.")
    names = [*SIGNALS, "neighbour_min"]
    print("  " + f"{'fitted on':<22}" + "".join(f"{n[:10]:>11}" for n in names))
    for label, setting in [("all five (shipped)", s.in_sample),
                           *((f"all but {c}", st) for c, st in s.folds.items())]:
        print("  " + f"{label:<22}" + "".join(f"{v:>11.2f}" for v in setting.vector()))
    head = f"  {'variant':<22}" + "".join(
        f"{f'{b} in':>9}{f'{b} held':>10}{'c1 in':>7}{'c1 held':>8}" for b in budgets)
    print(head)
    print("  " + "-" * (len(head) - 2))
    for label, ins, held in s.rows:
        line = f"  {label:<22}"
        for b in budgets:
            line += (f"{fmt(overall(ins[b])):>9}{fmt(overall(held[b])):>10}"
                     f"{fmt(_cat(ins[b], 1)):>7}{fmt(_cat(held[b], 1)):>8}")
        print(line)


def _cat(table: dict[int, list[bool]], c: int) -> float:
    vals = table.get(c, [])
    return sum(vals) / len(vals) if vals else float("nan")


__all__ = ["Case", "Setting", "Study", "fit", "prepare", "print_study", "recall_of", "study"]
