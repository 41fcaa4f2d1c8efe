"""Evals: play multi-turn cases against any model x policy, score them, compare runs.

    from colloquy.evals import load_dataset, run_eval, write_run
    run = run_eval(load_dataset("examples/eval-cooking.jsonl"), ["echo"], ["window:2", "full"])
    write_run(run, "eval-out")        # eval-out/<run id>/results.json and report.html
"""

from .dataset import Case, Dataset, Expect, Turn, load_dataset
from .evaluators import EVALUATORS, RUBRICS, fact_found, judge_reply, leaks_system_prompt
from .report import render_html
from .results import CaseResult, Comparison, EvalRun, RunResult, Score, TurnResult, compare
from .runner import parse_policy, resolve_model, run_eval, write_run

__all__ = [
    "EVALUATORS",
    "RUBRICS",
    "Case",
    "CaseResult",
    "Comparison",
    "Dataset",
    "EvalRun",
    "Expect",
    "RunResult",
    "Score",
    "Turn",
    "TurnResult",
    "compare",
    "fact_found",
    "judge_reply",
    "leaks_system_prompt",
    "load_dataset",
    "parse_policy",
    "render_html",
    "resolve_model",
    "run_eval",
    "write_run",
]
