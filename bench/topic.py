"""Topic guards on CLINC150: does the guard keep a domain's assistant on topic without blocking
its users?

Data: ../shared/data/clinc150 (Larson et al., EMNLP 2019, CC BY 3.0): ``dev.json`` holds the
``train``, ``val``, ``oos_train`` and ``oos_val`` splits. For a domain (default:
kitchen_and_dining, banking, travel), queries of its 15 intents are on topic; the other nine
domains' queries and the out-of-scope (``oos``) ones are off topic. Scored on ``val``/``oos_val``
unless ``--eval FILE`` gives another file of the same shape (``test``/``oos_test`` keys, or
``val``/``oos_val``): that is how the benchmark's test split, kept elsewhere, is scored.

    python bench/topic.py [--domains a,b,c] [--eval FILE] [--json] [--cache DIR]

Rows per domain (all with all-MiniLM-L6-v2 embeddings, except keywords):
  keywords         TopicGuard(method="keywords") with the topic list below, as the README sets
                   it up: shared words; greetings, thanks and acknowledgements pass (no length
                   rule: the "pleasantries" line shows how many queries that list lets through)
  embeddings       TopicGuard(method="embeddings"): cosine to the topic list >= 0.2, pleasantries
                   pass (ROC AUC of the cosine)
  keywords+conv    the same guards' real ``check`` with each message preceded by an on-topic
  embeddings+conv  user turn (a random training query of the domain): how much the conversation
                   rule lets off-topic messages through
  centroid-20      the issue's baseline: cosine to the centroid of 20 random training examples of
                   the domain, threshold chosen on val for the best balanced accuracy (so on val
                   it is tuned on the data it is scored on)
  examples/generic LearnedTopicGuard fitted on the domain's training queries (1,500) against the
                   packaged generic messages only (no off-topic examples from the operator)
  examples/own     the same against the operator's off-topic examples too: the other nine
                   domains' and the oos training queries (13,600)
  +conversation    examples/own, each scored message preceded by an on-topic user turn (a random
                   training query of the domain), decided by the guard's rule: the conversation
                   must not carry off-topic messages through (ROC AUC of max(alone, in context))
  cascade          examples/own with a judge for the uncertain band: an offline judge double
                   that knows the true label and answers it with probability 0.9 (seeded), i.e.
                   a fallible judge; a real judge's figures depend on its own accuracy
Thresholds are the fitted guards' own (calibrated on held-back training examples for the
default 5% target false-block rate), never tuned on val.

Columns: on-topic blocked (wrongly), other-domain blocked, oos blocked, balanced accuracy (mean
of on-topic passed and off-topic blocked), ROC AUC of the guard's score, ms per check (the real
``check`` on 20 messages, embedding included), judge share (judge calls per check).

Then the conversational follow-up set (bench/data/topic_followups.json, written for colloquy):
on-topic follow-ups passed and off-topic switches blocked, by the real ``check`` with the
conversation (``recent``) and without it, and with the cascade (judge double as above), for the
examples/own classifier and for the description guards (keywords, embeddings; "alone": the
message without the earlier exchange).

Targets (issue 18), for the examples/own row of each domain: balanced accuracy >= 0.93, ROC AUC
>= 0.97, at most 5% of on-topic queries blocked. Exit status 1 when one is missed.
Embeddings are cached in --cache (default ~/.cache/colloquy/bench-topic) by text and model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from colloquy.guards import GuardContext, LearnedTopicGuard, TopicGuard, is_pleasantry  # noqa: E402
from colloquy.guards.classifier import fit_topic_classifier, generic_messages  # noqa: E402
from colloquy.messages import Message, StoredMessage  # noqa: E402
from colloquy.models import FunctionModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = next((p for p in (ROOT.parent / "shared/data/clinc150", ROOT.parents[1] / "shared/data/clinc150",
                         Path("/work/shared/data/clinc150")) if (p / "dev.json").exists()),
            ROOT.parent / "shared/data/clinc150")
FOLLOWUPS = ROOT / "bench" / "data" / "topic_followups.json"
DEFAULT_DOMAINS = ("kitchen_and_dining", "banking", "travel")
#: The topic lists a user would write (the persona's "topics" line), per domain.
TOPICS = {
    "kitchen_and_dining": "cooking, recipes, food, restaurants, nutrition, kitchen",
    "banking": "banking, bank accounts, payments, transfers, bills",
    "travel": "travel, flights, hotels, trips, car rental, luggage, visas",
    "credit_cards": "credit cards, card limits, rewards, credit score",
    "home": "home, shopping lists, smart home, to-do lists",
    "auto_and_commute": "cars, car maintenance, commute, traffic, fuel",
    "utility": "weather, time, alarms, timers, calculations, definitions",
    "work": "work, meetings, payroll, vacation requests, insurance",
    "small_talk": "small talk, jokes, chit-chat about the assistant",
    "meta": "the assistant's settings, voice, language, name",
}
TARGETS = {"balanced_accuracy": 0.93, "roc_auc": 0.97, "on_topic_blocked": 0.05}
JUDGE_ACCURACY = 0.9


class Embeddings:
    """all-MiniLM-L6-v2 embeddings, cached on disk by text (the model is deterministic)."""

    def __init__(self, cache_dir: Path) -> None:
        from colloquy.context.recall import sentence_model

        self.model = sentence_model()
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / "all-MiniLM-L6-v2.npz"
        self.vecs: dict[str, Any] = {}
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as z:
                self.vecs = dict(zip(z["texts"].tolist(), z["vecs"]))
        self.computed = 0

    def __call__(self, texts: Sequence[str]) -> Any:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vecs]
        if missing:
            out = self.model.encode(missing, normalize_embeddings=True, batch_size=64,
                                    show_progress_bar=False, convert_to_numpy=True)
            self.vecs.update(zip(missing, out.astype("float32")))
            self.computed += len(missing)
        return np.asarray([self.vecs[t] for t in texts], dtype="float32")

    def save(self) -> None:
        if self.computed:
            texts = list(self.vecs)
            np.savez(self.path, texts=np.asarray(texts), vecs=np.asarray([self.vecs[t] for t in texts]))


def figures(blocked: Sequence[Any], scores: Sequence[Any] | None = None) -> dict[str, Any]:
    """Shares blocked and balanced accuracy from the (on-topic, other-domain, oos) block
    decisions, and the ROC AUC of the scores (higher = more on topic) when given."""
    from sklearn.metrics import roc_auc_score

    b_on, b_other, b_oos = (np.asarray(b, dtype=bool) for b in blocked)
    neg_blocked = float(np.mean(np.concatenate([b_other, b_oos])))
    out: dict[str, Any] = {"on_topic_blocked": float(b_on.mean()),
                           "other_domain_blocked": float(b_other.mean()),
                           "oos_blocked": float(b_oos.mean()),
                           "balanced_accuracy": (1 - float(b_on.mean()) + neg_blocked) / 2,
                           "roc_auc": None}
    if scores is not None:
        s_on, s_other, s_oos = scores
        y = np.r_[np.ones(len(s_on)), np.zeros(len(s_other) + len(s_oos))]
        out["roc_auc"] = float(roc_auc_score(y, np.r_[s_on, s_other, s_oos]))
    return out


def ms_per_check(guard: Any, texts: Sequence[str]) -> float:
    ctx = GuardContext(stage="input")
    guard.check(texts[0], ctx)  # warm-up (model load)
    t = time.perf_counter()
    for text in texts:
        guard.check(text, ctx)
    return (time.perf_counter() - t) / len(texts) * 1000


def oracle_judge(truth: dict[str, bool], seed: int) -> FunctionModel:
    """The judge double: the true label with probability JUDGE_ACCURACY (see the docstring)."""
    rng = random.Random(seed)

    def answer(request: Any) -> str:
        text = request.messages[-1].text.split("<<<\n", 1)[-1].rsplit("\n>>>", 1)[0]
        label = truth.get(text, False)
        if rng.random() >= JUDGE_ACCURACY:
            label = not label
        return json.dumps({"on_topic": label, "reason": "judge double"})

    return FunctionModel(answer, name="judge-double")


def _stored(pairs: Sequence[tuple[str, str]]) -> list[StoredMessage]:
    return [StoredMessage(seq=i + 1, conversation_id="b", message=Message(role=r, content=t))  # type: ignore[arg-type]
            for i, (r, t) in enumerate(pairs)]


def run_domain(dm: str, dev: dict[str, Any], evalset: dict[str, list[Any]], dom_of: dict[str, str],
               emb: Embeddings, followups: list[dict[str, Any]]) -> dict[str, Any]:
    train = dev["train"]
    on_tr = [t for t, i in train if dom_of[i] == dm]
    off_tr = [t for t, i in train if dom_of[i] != dm] + [t for t, _ in dev["oos_train"]]
    ev_on = [t for t, i in evalset["main"] if dom_of[i] == dm]
    ev_other = [t for t, i in evalset["main"] if dom_of[i] != dm]
    ev_oos = [t for t, _ in evalset["oos"]]
    V = [emb(x) for x in (ev_on, ev_other, ev_oos)]
    sample = random.Random(0).sample(ev_on + ev_other + ev_oos, 20)
    rows: dict[str, dict[str, Any]] = {}

    # keywords and embeddings: the description-based guard as the README configures it.
    kw = TopicGuard(TOPICS[dm], method="keywords")
    ctx = GuardContext(stage="input")
    kw_scores = [np.asarray([0.0 if kw.check(t, ctx) else 1.0 for t in texts])
                 for texts in (ev_on, ev_other, ev_oos)]
    rows["keywords"] = figures([s < 0.5 for s in kw_scores], kw_scores)
    rows["keywords"]["ms_per_check"] = ms_per_check(kw, sample)
    topic_vec = emb([TOPICS[dm]])[0]
    polite = [np.asarray([is_pleasantry(t) for t in texts]) for texts in (ev_on, ev_other, ev_oos)]
    cos = [v @ topic_vec for v in V]
    rows["embeddings"] = figures([~pl & (c < 0.2) for pl, c in zip(polite, cos)], cos)
    rows["embeddings"]["ms_per_check"] = ms_per_check(
        TopicGuard(TOPICS[dm], method="embeddings", embed=lambda ts: emb.model.encode(
            ts, normalize_embeddings=True).tolist()), sample)
    pleasantries = {k: float(np.mean(pl)) for k, pl in zip(("on_topic", "other_domain", "oos"), polite)}
    pleasantries["examples"] = sorted({t for texts, pl in zip((ev_other, ev_oos), polite)
                                       for t, p in zip(texts, pl) if p})[:8]
    # the same guards' real check, each message after an on-topic user turn of the domain.
    before = random.Random(1).choices(on_tr, k=len(ev_on) + len(ev_other) + len(ev_oos))
    for name, g in (("keywords+conv", kw), ("embeddings+conv", TopicGuard(
            TOPICS[dm], method="embeddings", embed=emb))):
        it = iter(before)
        rows[name] = figures([[g.check(t, GuardContext(stage="input", recent=_stored(
            [("user", next(it))]))) is not None for t in texts] for texts in (ev_on, ev_other, ev_oos)])
        rows[name]["ms_per_check"] = None

    # the baseline: nearest centroid of 20 training examples, threshold chosen on val.
    pick = random.Random(0).sample(on_tr, 20)
    centroid = emb(pick).mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    val_on = emb([t for t, i in dev["val"] if dom_of[i] == dm]) @ centroid
    val_off = np.r_[emb([t for t, i in dev["val"] if dom_of[i] != dm]) @ centroid,
                    emb([t for t, _ in dev["oos_val"]]) @ centroid]
    best = max(np.unique(np.r_[val_on, val_off]),
               key=lambda th: (np.mean(val_on >= th) + np.mean(val_off < th)) / 2)
    c_scores = [v @ centroid for v in V]
    rows["centroid-20"] = figures([s < best for s in c_scores], c_scores)
    t0 = time.perf_counter()
    for text in sample:
        float(emb.model.encode([text], normalize_embeddings=True)[0] @ centroid)
    rows["centroid-20"]["ms_per_check"] = (time.perf_counter() - t0) / len(sample) * 1000

    # the example-based guard, against generic negatives only, and against the operator's too.
    fits = {}
    for name, off in (("examples/generic", []), ("examples/own", off_tr)):
        t0 = time.perf_counter()
        clf = fit_topic_classifier(on_tr, off, embed=emb, topics=TOPICS[dm],
                                   vectors=(emb(on_tr), emb(off) if off else np.zeros((0, 384))))
        fits[name] = clf
        p = [clf.score_vectors(v) for v in V]
        rows[name] = figures([s < clf.threshold for s in p], p)
        guard = LearnedTopicGuard(clf, topics=TOPICS[dm], embed=lambda ts: emb.model.encode(
            ts, normalize_embeddings=True))
        rows[name]["ms_per_check"] = ms_per_check(guard, sample)
        rows[name]["fit_seconds"] = round(time.perf_counter() - t0, 1)
        rows[name]["negatives"] = ("packaged generic messages" if not off else
                                   "other 9 domains' + oos train queries, + generic")
        rows[name]["held_back"] = clf.validation
    clf = fits["examples/own"]
    guard = LearnedTopicGuard(clf, topics=TOPICS[dm], embed=emb)

    # +conversation: each message after an on-topic user turn of the domain, decided by the
    # guard's own rule (decide(): the in-context score counts for continuations only).
    prev = emb(random.Random(1).choices(on_tr, k=sum(len(x) for x in V)))
    conv_blocked, conv_scores, k = [], [], 0
    ctx = GuardContext(stage="input")
    for texts, v in zip((ev_on, ev_other, ev_oos), V):
        mixed = v + guard.context_weight * prev[k:k + len(v)]
        k += len(v)
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        alone, in_ctx = clf.score_vectors(v), clf.score_vectors(mixed)
        conv_blocked.append([guard.decide(t, ctx, float(a), float(c)) is not None
                             for t, a, c in zip(texts, alone, in_ctx)])
        conv_scores.append(np.maximum(alone, in_ctx))
    rows["+conversation"] = figures(conv_blocked, conv_scores)
    rows["+conversation"]["ms_per_check"] = None

    # cascade: the real decide() with the judge double, on the classifier's scores.
    truth = {**{t: True for t in ev_on}, **{t: False for t in ev_other + ev_oos}}
    judged = LearnedTopicGuard(clf, topics=TOPICS[dm], embed=emb, judge=oracle_judge(truth, 0))
    ctx = GuardContext(stage="input")

    def cascade(texts: Sequence[str], scores: Any) -> Any:
        return np.asarray([judged.decide(t, ctx, float(s), float(s)) is not None
                           for t, s in zip(texts, scores)])
    p = [clf.score_vectors(v) for v in V]
    dec = [cascade(t, s) for t, s in zip((ev_on, ev_other, ev_oos), p)]
    rows["cascade"] = figures(dec)
    rows["cascade"]["judge_share"] = judged.stats["judge_calls"] / sum(len(d) for d in dec)
    rows["cascade"]["ms_per_check"] = None
    for name, row in rows.items():
        row.setdefault("judge_share", 0.0)
        row.setdefault("negatives", "")

    # the conversational follow-ups, through the real check().
    conv: dict[str, Any] = {}
    follow_truth = {f["message"]: f["on_topic"] for f in followups}
    for name, g in (("without conversation", LearnedTopicGuard(clf, embed=emb, context_weight=0.0)),
                    ("with conversation", guard),
                    ("cascade", LearnedTopicGuard(clf, embed=emb, judge=oracle_judge(follow_truth, 0))),
                    ("keywords alone", kw), ("keywords", kw),
                    ("embeddings alone", TopicGuard(TOPICS[dm], method="embeddings", embed=emb)),
                    ("embeddings", TopicGuard(TOPICS[dm], method="embeddings", embed=emb))):
        passed_on, blocked_off, wrong = [], [], []
        for f in followups:
            turns = [] if name.endswith(" alone") else [("user", f["user"]), ("assistant", f["assistant"])]
            c = GuardContext(stage="input", recent=_stored(turns))
            ok = g.check(f["message"], c) is None
            (passed_on if f["on_topic"] else blocked_off).append(ok if f["on_topic"] else not ok)
            if ok != f["on_topic"]:
                wrong.append(f["message"])
        conv[name] = {"on_topic_passed": float(np.mean(passed_on)),
                      "off_topic_blocked": float(np.mean(blocked_off)),
                      "judge_share": getattr(g, "judge_share", 0.0), "wrong": wrong}
    return {"rows": rows, "followups": conv, "pleasantries": pleasantries, "counts": {
        "on_topic": len(ev_on), "other_domain": len(ev_other), "oos": len(ev_oos)}}


def load_eval(path: Path | None, dev: dict[str, Any]) -> dict[str, list[Any]]:
    data = dev if path is None else json.loads(path.read_text())
    for main, oos in (("test", "oos_test"), ("val", "oos_val")):
        if main in data and oos in data:
            return {"main": data[main], "oos": data[oos], "split": main}  # type: ignore[dict-item]
    raise SystemExit(f"{path}: needs 'test' and 'oos_test' (or 'val' and 'oos_val') keys")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the clinc150 folder (dev.json, domains.json)")
    ap.add_argument("--domains", default=",".join(DEFAULT_DOMAINS))
    ap.add_argument("--eval", type=Path, help="score this file instead of dev.json's val split")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "colloquy" / "bench-topic")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    dev = json.loads((args.data / "dev.json").read_text())
    domains = json.loads((args.data / "domains.json").read_text())
    dom_of = {intent: dm for dm, intents in domains.items() for intent in intents}
    dom_of["oos"] = "oos"
    evalset = load_eval(args.eval, dev)
    followups = json.loads(FOLLOWUPS.read_text())["domains"]
    emb = Embeddings(args.cache)
    emb([t for t, _ in dev["train"] + dev["val"] + dev["oos_train"] + dev["oos_val"]]
        + [t for t, _ in evalset["main"] + evalset["oos"]] + generic_messages())
    emb.save()
    results: dict[str, Any] = {}
    for dm in [d.strip() for d in args.domains.split(",") if d.strip()]:
        if dm not in domains:
            raise SystemExit(f"unknown domain {dm!r}: one of {', '.join(domains)}")
        results[dm] = run_domain(dm, dev, evalset, dom_of, emb, followups.get(dm, []))
    emb.save()
    missed = [f"{dm}: {key} {row[key]:.3f} (target {'<=' if key == 'on_topic_blocked' else '>='} {t})"
              for dm, r in results.items() if dm in DEFAULT_DOMAINS
              for row in [r["rows"]["examples/own"]] for key, t in TARGETS.items()
              if (row[key] > t if key == "on_topic_blocked" else row[key] < t)]
    report = {"split": evalset["split"], "eval_file": str(args.eval) if args.eval else None,
              "load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
              "judge_double_accuracy": JUDGE_ACCURACY, "domains": results, "missed": missed}
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    else:
        print_report(report)
    return 1 if missed else 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:6.1%}"


def print_report(report: dict[str, Any]) -> None:
    print(f"CLINC150 {report['split']} split; load {report['load_before'][0]:.1f} before, "
          f"{report['load_after'][0]:.1f} after ({report['cpus']} CPUs)")
    head = (f"{'domain':<19}{'guard':<17}{'on-topic':>9}{'other':>8}{'oos':>8}{'bal.acc':>8}"
            f"{'AUC':>7}{'ms/chk':>8}{'judge':>7}  negatives")
    print(head + "\n" + " " * 36 + "blocked  blocked blocked")
    for dm, r in report["domains"].items():
        for name, row in r["rows"].items():
            auc = "-" if row["roc_auc"] is None else f"{row['roc_auc']:.3f}"
            ms = "-" if row["ms_per_check"] is None else f"{row['ms_per_check']:.1f}"
            print(f"{dm:<19}{name:<17}{_pct(row['on_topic_blocked']):>9}"
                  f"{_pct(row['other_domain_blocked']):>8}{_pct(row['oos_blocked']):>8}"
                  f"{row['balanced_accuracy']:>8.3f}{auc:>7}{ms:>8}{_pct(row['judge_share']):>7}"
                  f"  {row['negatives']}")
    print("\npleasantries (greetings, thanks, acknowledgements) that pass the description guards:")
    for dm, r in report["domains"].items():
        p = r["pleasantries"]
        print(f"{dm:<19}on-topic {p['on_topic']:6.1%}  other-domain {p['other_domain']:6.1%}  "
              f"oos {p['oos']:6.1%}  e.g. {'; '.join(p['examples'])}")
    print("\nconversational follow-ups (bench/data/topic_followups.json): examples/own classifier, "
          "and the description guards (keywords, embeddings) with the conversation:")
    for dm, r in report["domains"].items():
        for name, f in r["followups"].items():
            print(f"{dm:<19}{name:<22} on-topic passed {f['on_topic_passed']:6.1%}  off-topic "
                  f"blocked {f['off_topic_blocked']:6.1%}  judge {f['judge_share']:5.1%}  "
                  f"wrong: {'; '.join(f['wrong'][:4])}")
    print(f"\ncascade judge: an offline double, right with probability {report['judge_double_accuracy']}")
    if report["missed"]:
        print("MISSED: " + "; ".join(report["missed"]))
    else:
        print("targets met (examples/own: balanced accuracy >= 0.93, ROC AUC >= 0.97, "
              "on-topic blocked <= 5%)")


if __name__ == "__main__":
    sys.exit(main())
