"""``colloquy guard fit``: fit the example-based topic guard from a file of examples, store it, and
print its validation figures (the CLI face of :mod:`colloquy.guards.classifier`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError


def add_parser(sub: Any) -> None:
    guard = sub.add_parser("guard", help="topic guard tools: fit a classifier from examples")
    gsub = guard.add_subparsers(dest="guard_command", metavar="ACTION", required=True)
    p = gsub.add_parser(
        "fit", help="fit a topic classifier from examples; store it as JSON; print its figures")
    p.add_argument("examples", metavar="EXAMPLES",
                   help="TOML/JSON with on_topic (and off_topic, topics) lists, or a text file "
                   "with one on-topic message a line")
    p.add_argument("--out", required=True, metavar="FILE", help="where the classifier is written")
    p.add_argument("--topics", default="", help="topic description (default: the file's topics)")
    p.add_argument("--target-false-block", type=float, default=0.05, metavar="X",
                   help="share of on-topic messages the threshold may block (default 0.05)")
    p.add_argument("--no-generic", action="store_true",
                   help="fit only against the file's off_topic examples, not the packaged "
                   "generic messages")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_guard_fit)


def cmd_guard_fit(args: argparse.Namespace) -> int:
    from .classifier import fit_topic_classifier, load_examples
    from .embedder import default_embedder

    examples = load_examples(args.examples)
    embed = default_embedder()
    if embed is None:
        raise ConfigError("colloquy guard fit needs the embeddings extra: "
                          "pip install -e '.[embeddings]'")
    clf = fit_topic_classifier(
        examples.on_topic, examples.off_topic, embed=embed,
        topics=args.topics or examples.topics, target_false_block=args.target_false_block,
        generic_negatives=not args.no_generic,
    )
    try:
        clf.save(args.out)
    except OSError as e:
        raise ConfigError(f"cannot write {args.out!r}: {e.strerror or e}") from e
    v = clf.validation
    if args.json:
        print(json.dumps({"out": args.out, "threshold": clf.threshold, "band": list(clf.band),
                          "validation": v}, indent=2))
        return 0
    out = sys.stdout
    out.write(f"wrote {args.out}\n")
    out.write(f"examples: {v['on_topic_examples']} on topic, {v['off_topic_examples']} off topic"
              f" + {v['generic_negatives']} generic; {v['folds']}-fold held-back scores\n")
    out.write(f"threshold {clf.threshold:.3f} (target: {clf.target_false_block:.0%} of on-topic "
              f"blocked); judge band [{clf.band[0]:.3f}, {clf.band[1]:.3f})\n")
    out.write(f"held back: on-topic blocked {v['on_topic_blocked']:.1%}, off-topic blocked "
              f"{v['off_topic_blocked']:.1%}, balanced accuracy {v['balanced_accuracy']:.3f}, "
              f"ROC AUC {v['roc_auc']:.3f}, judge share with a judge {v['judge_share']:.1%}\n")
    return 0
