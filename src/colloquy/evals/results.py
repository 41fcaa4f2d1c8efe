"""What an eval run produces, as plain values saved to ``results.json`` and compared run to run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..errors import ConfigError
from ..files import write_private_text


class TurnResult(BaseModel):
    """One played turn."""

    user: str
    reply: str = ""
    #: An input guard answered instead of the model.
    blocked: bool = False
    guards: list[dict[str, Any]] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    latency_s: float = 0.0
    error: str | None = None


class Score(BaseModel):
    """One evaluator's score of one case: 0..1, or None when it could not be scored."""

    evaluator: str
    score: float | None
    passed: bool | None = None
    #: Why: matched facts, the judge's reason, the deterministic check that fired.
    detail: str = ""
    error: str | None = None


class CaseResult(BaseModel):
    case_id: str
    turns: list[TurnResult]
    scores: list[Score] = Field(default_factory=list)

    def score(self, evaluator: str) -> Score | None:
        return next((s for s in self.scores if s.evaluator == evaluator), None)


class RunResult(BaseModel):
    """One model x policy combination over the whole dataset."""

    label: str
    model: str
    policy: str
    guards: list[str] = Field(default_factory=list)
    cases: list[CaseResult]
    #: Mean score per evaluator over the cases it applied to (None: nothing scored).
    summary: dict[str, float | None] = Field(default_factory=dict)
    cost_usd: float | None = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    turns: int = 0
    errors: int = 0
    mean_latency_s: float = 0.0


class Change(BaseModel):
    label: str
    evaluator: str
    before: float | None
    after: float | None
    delta: float | None
    regression: bool


class CaseChange(BaseModel):
    label: str
    case_id: str
    evaluator: str
    before: bool | None
    after: bool | None


class Comparison(BaseModel):
    """This run against a previous one: a score that dropped by more than ``tolerance`` or a
    case that passed before and fails now is a regression."""

    previous_id: str
    tolerance: float
    changes: list[Change] = Field(default_factory=list)
    newly_failing: list[CaseChange] = Field(default_factory=list)
    newly_passing: list[CaseChange] = Field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.newly_failing)


class EvalRun(BaseModel):
    id: str
    dataset: str
    created_at: float
    judge: str | None = None
    runs: list[RunResult]
    #: Rubrics used by the judge, by evaluator (shown in the report).
    rubrics: dict[str, str] = Field(default_factory=dict)
    comparison: Comparison | None = None

    def save(self, path: Path) -> None:
        write_private_text(path, json.dumps(self.model_dump(mode="json"), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> EvalRun:
        """From a ``results.json`` or the run directory holding one."""
        p = Path(path)
        if p.is_dir():
            p = p / "results.json"
        try:
            return cls.model_validate_json(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"previous eval run {str(p)!r}: {e.strerror or e}") from e
        except ValueError as e:
            raise ConfigError(f"{str(p)!r} is not an eval results file: {e}") from e


def compare(current: EvalRun, previous: EvalRun, tolerance: float = 0.02) -> Comparison:
    """Match runs by label (model + policy) and evaluators by name, then cases by id."""
    out = Comparison(previous_id=previous.id, tolerance=tolerance)
    before_runs = {r.label: r for r in previous.runs}
    for run in current.runs:
        old = before_runs.get(run.label)
        if old is None:
            continue
        for ev in sorted(set(run.summary) | set(old.summary)):
            a, b = old.summary.get(ev), run.summary.get(ev)
            delta = None if a is None or b is None else round(b - a, 4)
            out.changes.append(Change(
                label=run.label, evaluator=ev, before=a, after=b, delta=delta,
                regression=(delta is not None and delta < -tolerance) or (a is not None and b is None),
            ))
        old_cases = {c.case_id: c for c in old.cases}
        for case in run.cases:
            prev = old_cases.get(case.case_id)
            if prev is None:
                continue
            for s in case.scores:
                p = prev.score(s.evaluator)
                if p is None or p.passed is None or s.passed is None or p.passed == s.passed:
                    continue
                change = CaseChange(label=run.label, case_id=case.case_id, evaluator=s.evaluator,
                                    before=p.passed, after=s.passed)
                (out.newly_failing if p.passed else out.newly_passing).append(change)
    return out
