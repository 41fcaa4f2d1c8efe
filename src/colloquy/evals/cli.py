"""``colloquy eval``: the command-line face of :mod:`colloquy.evals` (kept here so the main
CLI module only registers it)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError
from ..guards import build_guards
from .dataset import load_dataset
from .report import evaluator_names
from .results import EvalRun
from .runner import run_eval, write_run

EXIT_REGRESSION = 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="run an eval dataset; report as HTML + JSON; compare runs")
    p.add_argument("dataset", metavar="DATASET", help="cases as .jsonl, .json or .yaml")
    p.add_argument("--model", action="append", metavar="M",
                   help="model to evaluate (repeatable): echo, claude-..., gpt-..., "
                   "ollama:NAME, or py:module:attr for your own Model")
    p.add_argument("--judge", metavar="M", help="judge model for the rubric evaluators "
                   "(persona, coherence, helpfulness, safety); without it they are skipped")
    p.add_argument("--policy", action="append", metavar="P",
                   help="context policy (repeatable): default, full, window:N, budget:N, module:attr")
    p.add_argument("--guard", action="append", metavar="SPEC", help="guard, as in colloquy chat")
    p.add_argument("--guards", metavar="FILE", help="guards from a TOML/JSON file")
    p.add_argument("--out", default="eval-runs", metavar="DIR",
                   help="where runs are written: DIR/<run id>/results.json + report.html")
    p.add_argument("--compare", metavar="PREVIOUS_RUN",
                   help="a previous run (its directory or results.json): exit 1 on a regression")
    p.add_argument("--tolerance", type=float, default=0.02, metavar="X",
                   help="a score drop larger than this is a regression (default 0.02)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    if not 0 <= args.tolerance < 1:
        raise ConfigError(f"--tolerance must be between 0 and 1, not {args.tolerance}")
    dataset = load_dataset(args.dataset)
    previous = EvalRun.load(args.compare) if args.compare else None
    guards, _ = build_guards(args.guard or [], args.guards, judge=args.judge)
    err = sys.stderr

    def progress(msg: str) -> None:
        err.write(f"  {msg}\n")

    run = run_eval(
        dataset, args.model or [None], args.policy or ["default"], judge=args.judge,
        guards=guards, progress=progress,
    )
    target = write_run(run, args.out, previous, args.tolerance)
    if args.json:
        out: dict[str, Any] = {"id": run.id, "dir": str(target), "runs": [
            {k: getattr(r, k) for k in ("label", "summary", "cost_usd", "input_tokens",
                                        "output_tokens", "errors")} for r in run.runs]}
        if run.comparison is not None:
            out["regressed"] = run.comparison.regressed
            out["comparison"] = run.comparison.model_dump(mode="json")
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        names = evaluator_names(run)
        width = max(len(r.label) for r in run.runs)
        sys.stdout.write(f"{'model · policy':<{width}}  " + "  ".join(f"{n:>11}" for n in names)
                         + "  errors\n")
        for r in run.runs:
            cells = "  ".join(f"{'-' if r.summary.get(n) is None else f'{r.summary[n]:.2f}':>11}"
                              for n in names)
            sys.stdout.write(f"{r.label:<{width}}  {cells}  {r.errors:>6}\n")
        c = run.comparison
        if c is not None:
            for ch in c.regressions:
                sys.stdout.write(f"REGRESSION {ch.label} · {ch.evaluator}: "
                                 f"{ch.before} -> {ch.after} ({ch.delta:+.2f})\n"
                                 if ch.delta is not None else
                                 f"REGRESSION {ch.label} · {ch.evaluator}: no score now\n")
            for f in c.newly_failing:
                sys.stdout.write(f"REGRESSION {f.label} · {f.case_id} · {f.evaluator}: "
                                 "passed before, fails now\n")
            if not c.regressed:
                sys.stdout.write(f"no regression against {c.previous_id}\n")
    err.write(f"report: {target / 'report.html'}\nresults: {target / 'results.json'}\n")
    return EXIT_REGRESSION if run.comparison is not None and run.comparison.regressed else 0
