"""The eval report: one self-contained HTML page (inline CSS and SVG, no script, no network), so
it can be attached to a pull request, archived with the run, or opened offline."""

from __future__ import annotations

import time
from html import escape

from .results import EvalRun, RunResult

PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1120px;color:#111827;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}.meta{color:#6b7280}table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{background:#dcfce7}.mid{background:#fef9c3}.bad{background:#fee2e2}.na{color:#9ca3af}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.banner.reg{background:#fee2e2;color:#991b1b}.banner.ok{background:#dcfce7;color:#166534}
.charts{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}.chart{border:1px solid
#e5e7eb;border-radius:6px;padding:8px;flex:0 0 auto}.legend{max-width:620px;font-size:12px}details{margin:4px 0}summary{cursor:pointer}.turn{margin:2px 0 2px 12px}
.u{color:#1d4ed8}.a{color:#374151}.err{color:#b91c1c}small{color:#6b7280}
"""


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _cls(x: float | None) -> str:
    if x is None:
        return "na"
    return "good" if x >= 0.8 else "mid" if x >= 0.5 else "bad"


def evaluator_names(run: EvalRun) -> list[str]:
    return list(dict.fromkeys(k for r in run.runs for k in r.summary))


def bar_chart(run: EvalRun, width: int = 620, height: int = 300) -> str:
    """Grouped bars: one group per evaluator, one bar per model x policy run; y is 0..1."""
    names = evaluator_names(run)
    left, bottom, top, right = 40, 40, 16, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="score per evaluator and policy">']
    for i in range(6):
        y = top + plot_h - plot_h * i / 5
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                     f'stroke="#e5e7eb"/><text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#6b7280">{i / 5:.1f}</text>')
    n_runs = max(len(run.runs), 1)
    group_w = plot_w / max(len(names), 1)
    bar_w = min(28.0, group_w * 0.8 / n_runs)
    for g, name in enumerate(names):
        x0 = left + g * group_w + (group_w - bar_w * n_runs) / 2
        for r, res in enumerate(run.runs):
            v = res.summary.get(name)
            x = x0 + r * bar_w
            color = PALETTE[r % len(PALETTE)]
            if v is None:
                parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - 4:.1f}" '
                             f'font-size="10" text-anchor="middle" fill="#9ca3af">n/a</text>')
                continue
            h = max(plot_h * v, 1.5)  # a zero still shows as a line
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{escape(res.label)} · '
                         f'{escape(name)}: {v:.2f}</title></rect>')
        parts.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{height - bottom + 18}" '
                     f'font-size="12" text-anchor="middle">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice(x: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``x`` (tidy axis ends)."""
    import math

    base = 10 ** math.floor(math.log10(x))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= x)


def _cost_axis(runs: list[RunResult]) -> tuple[str, list[float | None]]:
    """The scatter's x axis: each run's cost, None for a cost that is unknown (a call that
    reported no usage: never plotted at $0, attack7 F10); input tokens when every known cost
    is 0 (offline models)."""
    costs = [r.cost_usd for r in runs]
    if any(costs):
        return "cost (USD)", costs
    return "input tokens (offline models are free)", [float(r.input_tokens) for r in runs]


def scatter(run: EvalRun, width: int = 400, height: int = 300) -> str:
    """Cost (or input tokens when every model is free) against recall, one point per run."""
    left, bottom, top, right = 48, 44, 16, 16
    plot_w, plot_h = width - left - right, height - top - bottom
    label, xs = _cost_axis(run.runs)
    known = [x for x in xs if x is not None]
    x_max = _nice(max(known) * 1.05) if known and max(known) > 0 else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="cost vs recall">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
             f'stroke="#e5e7eb"/>']
    for i in range(6):
        y = top + plot_h - plot_h * i / 5
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#6b7280">{i / 5:.1f}</text>')
    for i in range(6):
        x = left + plot_w * i / 5
        v = x_max * i / 5
        txt = f"{v:.2g}" if v < 10 else f"{v:,.0f}" if v < 1000 else f"{v / 1000:.1f}k"
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" '
                     f'text-anchor="middle" fill="#6b7280">{txt}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="12" '
                 f'text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">recall</text>')
    for r, (res, xv) in enumerate(zip(run.runs, xs)):
        recall = res.summary.get("recall")
        if recall is None or xv is None:  # no score, or a cost that is unknown
            continue
        x = left + plot_w * xv / x_max
        y = top + plot_h - plot_h * recall
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{PALETTE[r % len(PALETTE)]}">'
                     f'<title>{escape(res.label)}: recall {recall:.2f}, {xv:.4g}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(run: EvalRun) -> str:
    return " ".join(
        f'<span style="white-space:nowrap"><span style="display:inline-block;width:10px;'
        f'height:10px;background:{PALETTE[i % len(PALETTE)]};margin:0 4px 0 10px"></span>'
        f'{escape(r.label)}</span>' for i, r in enumerate(run.runs))


def _summary_table(run: EvalRun) -> str:
    names = evaluator_names(run)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = []
    for r in run.runs:
        cells = "".join(f'<td class="num {_cls(r.summary.get(n))}">{_fmt(r.summary.get(n))}</td>'
                        for n in names)
        cost = "unknown" if r.cost_usd is None else f"${r.cost_usd:.4f}"
        rows.append(f"<tr><td>{escape(r.label)}</td>{cells}<td class='num'>{cost}</td>"
                    f"<td class='num'>{r.input_tokens:,} / {r.output_tokens:,}</td>"
                    f"<td class='num'>{r.mean_latency_s * 1000:.1f} ms</td>"
                    f"<td class='num'>{r.errors}</td></tr>")
    return (f'<table class="summary"><tr><th>model · policy</th>{head}<th>cost</th>'
            f"<th>tokens in / out</th><th>mean turn</th><th>errors</th></tr>{''.join(rows)}</table>")


def _comparison(run: EvalRun) -> str:
    c = run.comparison
    if c is None:
        return ""
    if c.regressed:
        banner = (f'<div class="banner reg">REGRESSION against run {escape(c.previous_id)}: '
                  f"{len(c.regressions)} score(s) dropped by more than {c.tolerance}, "
                  f"{len(c.newly_failing)} case(s) newly failing</div>")
    else:
        banner = (f'<div class="banner ok">No regression against run {escape(c.previous_id)} '
                  f"(tolerance {c.tolerance})</div>")
    shown = [ch for ch in c.changes if ch.regression or ch.delta != 0]
    rows = "".join(
        f"<tr class='{'bad' if ch.regression else 'good' if (ch.delta or 0) > 0 else ''}'>"
        f"<td>{escape(ch.label)}</td>"
        f"<td>{escape(ch.evaluator)}</td><td class='num'>{_fmt(ch.before)}</td>"
        f"<td class='num'>{_fmt(ch.after)}</td><td class='num'>"
        f"{'–' if ch.delta is None else f'{ch.delta:+.2f}'}</td></tr>" for ch in shown)
    if len(shown) < len(c.changes):
        rows += (f"<tr><td colspan='5' class='na'>{len(c.changes) - len(shown)} score(s) "
                 "unchanged</td></tr>")
    fails = "".join(f"<li>{escape(f.label)} · {escape(f.case_id)} · {escape(f.evaluator)}: "
                    f"passed before, fails now</li>" for f in c.newly_failing)
    return (f"<h2>Compared with {escape(c.previous_id)}</h2>{banner}<table><tr><th>model · policy"
            f"</th><th>evaluator</th><th>before</th><th>after</th><th>change</th></tr>{rows}</table>"
            + (f"<ul>{fails}</ul>" if fails else ""))


def _cases(run: EvalRun) -> str:
    names = evaluator_names(run)
    out = []
    for r in run.runs:
        rows = []
        for case in r.cases:
            cells = []
            for n in names:
                s = case.score(n)
                if s is None:
                    cells.append("<td class='na'>–</td>")
                    continue
                tip = escape(s.error or s.detail)
                cells.append(f"<td class='{_cls(s.score)}' title='{tip}'>{_fmt(s.score)}"
                             f"<br><small>{tip[:90]}</small></td>")
            turns = "".join(
                f"<div class='turn'><span class='u'>user:</span> {escape(t.user)}<br>"
                + (f"<span class='err'>error: {escape(t.error)}</span>" if t.error else
                   f"<span class='a'>{'guard' if t.blocked else 'assistant'}:</span> "
                   f"{escape(t.reply[:400])}") + "</div>" for t in case.turns)
            rows.append(f"<tr><td><details><summary>{escape(case.case_id)}</summary>{turns}"
                        f"</details></td>{''.join(cells)}</tr>")
        head = "".join(f"<th>{escape(n)}</th>" for n in names)
        out.append(f"<h3>{escape(r.label)}</h3><table><tr><th>case</th>{head}</tr>"
                   f"{''.join(rows)}</table>")
    return "".join(out)


def render_html(run: EvalRun) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.created_at))
    rubrics = "".join(f"<dt><b>{escape(k)}</b></dt><dd>{escape(v)}</dd>"
                      for k, v in run.rubrics.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>colloquy eval · {escape(run.dataset)}</title>
<style>{CSS}</style></head><body>
<h1>colloquy eval · {escape(run.dataset)}</h1>
<div class="meta">run {escape(run.id)} · {when} · judge {escape(run.judge or 'none')} ·
{len(run.runs)} model × policy run(s) · {len(run.runs[0].cases) if run.runs else 0} case(s)</div>
{_comparison(run)}
<h2>Scores</h2>
{_summary_table(run)}
<div class="charts">
<div class="chart"><b>Score per evaluator and policy</b><br>{bar_chart(run)}<div class="legend">{_legend(run)}</div></div>
<div class="chart"><b>Cost vs recall</b> <small>(colours as in the bar chart)</small><br>
{scatter(run)}</div>
</div>
<h2>Cases</h2>
{_cases(run)}
<h2>Rubrics</h2><dl>{rubrics}</dl>
<p class="meta">Scores are 0–1. Deterministic checks: recall (fact matching), topic (guard block
or a steer-back reply), safety (system prompt verbatim in a reply is a leak; refusals). Judged
scores map 1–5 to 0–1; a judge reply without a score is an error, not a zero.</p>
</body></html>
"""
