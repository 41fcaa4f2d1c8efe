"""Play a dataset against every model x policy combination, score it, save and compare runs.

Each case is played through the real :class:`Chat` (policies, guards, tool-free turns, usage and
cost accounting), in a fresh in-memory store, so an eval measures exactly what users get.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..chat import Chat
from ..context.base import ContextPolicy
from ..context.policies import FullHistory, RollingWindow, TokenBudget
from ..errors import ColloquyError, ConfigError
from ..files import private_dir, write_private_text
from ..guards import Guard
from ..models import Model, get_model
from ..plugins import load_object
from ..store import MemoryStore
from ..usage import add_costs
from .dataset import Dataset
from .evaluators import EVALUATORS, RUBRICS, EvaluatorFn, evaluate_case
from .results import CaseResult, EvalRun, RunResult, TurnResult, compare

PolicySpec = str | tuple[str, ContextPolicy]


def parse_policy(spec: str) -> tuple[str, ContextPolicy | None]:
    """``default``, ``full``, ``window:N``, ``budget:N`` (max input tokens) or
    ``module:attribute`` (a policy object, or a class/factory called with no arguments)."""
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    try:
        if spec == "default":
            return spec, None
        if spec == "full":
            return spec, FullHistory()
        if kind == "window":
            return spec, RollingWindow(turns=int(arg))
        if kind == "budget":
            return spec, TokenBudget(max_input_tokens=int(arg))
    except ValueError as e:
        raise ConfigError(f"policy {spec!r}: {kind}:N needs a whole number") from e
    if kind and arg:
        obj = _load(spec)
        policy = obj() if callable(obj) and not hasattr(obj, "build") else obj
        if not hasattr(policy, "build"):
            raise ConfigError(f"policy {spec!r} is not a context policy (it has no build method)")
        return spec, policy
    raise ConfigError(f"unknown policy {spec!r}: use default, full, window:N, budget:N or module:attr")


def _load(path: str) -> Any:
    return load_object(path, "eval plugin")


def resolve_model(spec: Model | str | None) -> Model:
    """A model from a name (see :func:`colloquy.models.get_model`) or ``py:module:attr`` (a Model,
    or a factory returning one: your own offline model, a judge built from a function...)."""
    if isinstance(spec, Model):
        return spec
    if spec is None:
        return get_model(None)
    if spec.startswith("py:"):
        obj = _load(spec[3:])
        model = obj if isinstance(obj, Model) else obj() if callable(obj) else None
        if not isinstance(model, Model):
            raise ConfigError(f"{spec!r} is not a colloquy Model (nor a factory of one)")
        return model
    return get_model(spec)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


def play(
    model: Model, policy: ContextPolicy | None, case_id: str, system: str, turns: Sequence[str],
    guards: Sequence[Guard] = (),
) -> list[TurnResult]:
    """Play one conversation turn by turn; a failed turn is recorded and the case goes on."""
    chat = Chat(model, system=system, store=MemoryStore(), session_id=f"eval-{case_id}",
                policy=policy, guards=list(guards))
    out: list[TurnResult] = []
    for text in turns:
        t0 = time.perf_counter()
        try:
            reply = chat.send(text)
        except (ColloquyError, LookupError, ValueError) as e:
            out.append(TurnResult(user=text, error=f"{type(e).__name__}: {e}",
                                  latency_s=time.perf_counter() - t0))
            continue
        out.append(TurnResult(
            user=text, reply=reply.text, blocked=reply.blocked, guards=reply.guards,
            input_tokens=reply.usage.prompt_tokens, output_tokens=reply.usage.output_tokens,
            cost_usd=reply.cost_usd, latency_s=time.perf_counter() - t0,
        ))
    return out


def _summarise(run: RunResult) -> RunResult:
    names = list(dict.fromkeys(s.evaluator for c in run.cases for s in c.scores))
    summary: dict[str, float | None] = {}
    for name in names:
        values = [s.score for c in run.cases if (s := c.score(name)) and s.score is not None]
        summary[name] = round(sum(values) / len(values), 4) if values else None
    turns = [t for c in run.cases for t in c.turns]
    costs = [t.cost_usd for t in turns]
    return run.model_copy(update=dict(
        summary=summary,
        cost_usd=None if (total := add_costs(costs)) is None else round(total, 8),
        input_tokens=sum(t.input_tokens for t in turns),
        output_tokens=sum(t.output_tokens for t in turns),
        turns=len(turns),
        errors=sum(1 for t in turns if t.error) + sum(
            1 for c in run.cases for s in c.scores if s.error),
        mean_latency_s=round(sum(t.latency_s for t in turns) / len(turns), 6) if turns else 0.0,
    ))


def run_eval(
    dataset: Dataset,
    models: Sequence[Model | str | None],
    policies: Sequence[PolicySpec] = ("default",),
    *,
    judge: Model | str | None = None,
    guards: Sequence[Guard] = (),
    evaluators: dict[str, EvaluatorFn] | None = None,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalRun:
    """Every model x policy over every case; returns the scored run (nothing is written)."""
    if not models:
        raise ConfigError("an eval needs at least one model")
    judge_model = resolve_model(judge) if judge is not None else None
    resolved = [parse_policy(p) if isinstance(p, str) else p for p in policies] or [("default", None)]
    runs: list[RunResult] = []
    for m in models:
        model = resolve_model(m)
        for label, policy in resolved:
            cases: list[CaseResult] = []
            for case in dataset.cases:
                if progress:
                    progress(f"{model.name} · {label} · {case.id}")
                turns = play(model, policy, case.id, case.system, [t.user for t in case.turns], guards)
                cases.append(CaseResult(case_id=case.id, turns=turns,
                                        scores=evaluate_case(case, turns, judge_model, evaluators)))
            runs.append(_summarise(RunResult(
                label=f"{model.name} · {label}", model=model.name, policy=label,
                guards=[g.name for g in guards], cases=cases,
            )))
    return EvalRun(
        id=run_id or new_run_id(), dataset=dataset.name, created_at=time.time(),
        judge=judge_model.name if judge_model else None, runs=runs,
        rubrics={k: v for k, v in RUBRICS.items() if (evaluators or EVALUATORS).get(k)},
    )


def write_run(run: EvalRun, out_dir: str | Path, previous: EvalRun | None = None,
              tolerance: float = 0.02) -> Path:
    """Compare with ``previous`` (if given), then write ``results.json`` and ``report.html``
    under ``out_dir/<run id>/``; returns that directory."""
    from .report import render_html

    if previous is not None:
        run.comparison = compare(run, previous, tolerance)
    target = Path(out_dir) / run.id
    private_dir(target)  # transcripts of conversations: owner-only, like the database
    run.save(target / "results.json")
    write_private_text(target / "report.html", render_html(run))
    return target
