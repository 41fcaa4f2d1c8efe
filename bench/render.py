"""How long does the web page take to render a 32,000-character message, adversarial or not?

    python bench/render.py [--runs 9] [--chars 32000] [--json]

The target (issue 15): any message of up to 32,000 characters (the service's default
``max_message_chars``) renders in under 50 ms in chromium. Debian's chromium
(COLLOQUY_TEST_CHROMIUM, else ``chromium`` on the PATH) opens the real page served by
``colloquy.server.create_app`` (so its Content-Security-Policy applies) and times, for each input
below, what showing a message costs: Markdown parsing (marked), sanitising (DOMPurify), code
highlighting (highlight.js), inserting the result into a message bubble and the layout that
follows (read back with ``offsetHeight``). Each input runs ``--runs`` times; the table shows
the median and the worst run. The exit status is 1 when an input's median misses the target.

The inputs are realistic (a long mixed reply, a large code block, a big table) and adversarial
(inputs known to make Markdown parsers backtrack or recurse: runs of brackets, backticks,
emphasis markers, angle brackets, deep nesting). tests/test_web.py renders the same inputs and
checks the output is right (no script, no lost text); only this script measures time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TARGET_MS = 50.0
CHARS = 32_000


def _fill(unit: str, chars: int) -> str:
    return (unit * (chars // len(unit) + 1))[:chars]


def _reply(chars: int) -> str:
    """A long, ordinary assistant reply: headings, lists, a table, code, links."""
    section = (
        "## Step {n}\n\nThe **plan** for step {n} is *simple*: read the `config`, then run it. "
        "See [the docs](https://example.com/docs/{n}) and ~~the old way~~.\n\n"
        "- first point\n  - nested detail with `code`\n    - deeper still\n- second point\n"
        "- [x] done item\n- [ ] open item\n\n"
        "| option | default | meaning |\n|---|:---:|--:|\n| `a` | 1 | the first |\n"
        "| `b` | 2 | the second |\n\n"
        "```python\ndef step_{n}(x: int) -> int:\n    return x * {n}  # double it\n```\n\n"
        "> A quote with **bold** text.\n\n"
    )
    out, n = [], 0
    while sum(map(len, out)) < chars:
        n += 1
        out.append(section.format(n=n))
    return "".join(out)[:chars]


def _code(chars: int) -> str:
    line = "    result = compute(value, [1, 2, 3], {'key': \"text\"})  # a comment\n"
    head, tail = "```python\ndef main():\n", "\n```\n"
    return head + _fill(line, chars - len(head) - len(tail)) + tail


def _table(chars: int) -> str:
    head = "| a | b | c | d |\n|---|---|---|---|\n"
    return head + _fill("| `x` | **y** | z | 12 |\n", chars - len(head))


def _nested_list(chars: int) -> str:
    lines, depth = [], 0
    while sum(len(x) + 1 for x in lines) < chars:
        lines.append("  " * depth + "- item")
        depth = (depth + 1) % 400
    return "\n".join(lines)[:chars]


def _wide_table(chars: int) -> str:
    """A table whose header (about 700 characters) is too long to repeat in every piece."""
    head = "|" + "col|" * 175 + "\n|" + "-|" * 175 + "\n"
    return head + _fill("|" + "x|" * 175 + "\n", chars - len(head))


def inputs(chars: int = CHARS) -> dict[str, str]:
    """Name -> a message of exactly ``chars`` characters."""
    made: dict[str, Callable[[int], str]] = {
        "long reply": _reply,
        "code block": _code,
        "table": _table,
        "nested lists": _nested_list,
        "nested ordered lists": lambda n: _fill("\n".join("1. " * 500 + "x" for _ in range(21)), n),
        "nested ordered lists 1)": lambda n: _fill("\n".join("1) " * 500 + "x" for _ in range(21)), n),
        "wide table": lambda n: _fill("|" + "a|" * 7990 + "\n|" + "-|" * 7990, n),
        "wide table with rows": _wide_table,
        "nested links": lambda n: _fill("[" * 3000 + "a" + "](x)" * 3000, n),
        "nested emphasis": lambda n: _fill("*_" * 4000 + "a" + "_*" * 4000, n),
        "nested quotes": lambda n: _fill(">", n),
        "quote + list nesting": lambda n: _fill("> - ", n),
        "brackets": lambda n: _fill("[", n),
        "link openers": lambda n: _fill("[a](", n),
        "image openers": lambda n: _fill("![", n),
        "backticks": lambda n: _fill("`", n),
        "alternating backticks": lambda n: _fill("a`", n),
        "stars": lambda n: _fill("*", n),
        "emphasis openers": lambda n: _fill("*a", n),
        "underscores": lambda n: _fill("_a_ ", n),
        "tildes": lambda n: _fill("~~a", n),
        "angle brackets": lambda n: _fill("<", n),
        "html tags": lambda n: _fill("<div>", n),
        "unclosed tags": lambda n: _fill("<a href='", n),
        "pipes": lambda n: _fill("|", n),
        "entities": lambda n: _fill("&amp;", n),
        "autolinks": lambda n: _fill("https://example.com/a ", n),
        "one long word": lambda n: _fill("a", n),
        "many lines": lambda n: _fill("a\n", n),
        "task list": lambda n: _fill("- [ ] task\n", n),
        "headings": lambda n: _fill("# h\n", n),
        "fences": lambda n: _fill("```\n", n),
    }
    out = {name: make(chars) for name, make in made.items()}
    for name, text in out.items():
        assert len(text) == chars, (name, len(text))
    return out


def chromium_path() -> str:
    path = os.environ.get("COLLOQUY_TEST_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not path:
        sys.exit("no chromium: apt-get install chromium (or set COLLOQUY_TEST_CHROMIUM)")
    return path


@contextmanager
def serve() -> Iterator[str]:
    """The real page, served on loopback in a thread (the tests' own helper)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from server_helpers import serve_in_thread

    from colloquy import MemoryStore
    from colloquy.server import create_app

    with serve_in_thread(create_app(store=MemoryStore(), model="echo", environ={},
                                    rate_limit=None)) as url:
        yield url


#: Runs in the page: show ``text`` in a message bubble as the page does (colloquyRender.into),
#: laid out; returns the milliseconds until the call returned with the first pieces on screen.
#: The Long Tasks API watches every task (50 ms or more) until FINISH has run.
START = """([text]) => {
    const host = document.getElementById('bench-host');
    host.textContent = '';
    window.__longest = 0;
    window.__observer = new PerformanceObserver(list => {
        for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
    });
    window.__observer.observe({type: 'longtask'});
    const li = document.createElement('li');
    li.className = 'message assistant';
    const body = document.createElement('div');
    body.className = 'body';
    li.appendChild(body);
    host.appendChild(li);
    window.__t0 = performance.now();
    window.__done = window.colloquyRender.into(body, text);
    void host.offsetHeight;
    window.__body = body;
    return performance.now() - window.__t0;
}"""
#: Waits for every piece; returns [ms from the start until all were in, the longest task,
#: characters shown].
FINISH = """async () => {
    await window.__done;
    void document.getElementById('bench-host').offsetHeight;
    const total = performance.now() - window.__t0;
    await new Promise(r => setTimeout(r, 0));
    window.__observer.takeRecords().forEach(e => {
        window.__longest = Math.max(window.__longest, e.duration); });
    window.__observer.disconnect();
    return [total, window.__longest, window.__body.textContent.length];
}"""


def measure(runs: int, chars: int) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    rows = []
    with serve() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/")
        page.wait_for_function("() => window.colloquyRender !== undefined")
        page.evaluate("""() => {
            const ol = document.createElement('ol');
            ol.id = 'bench-host'; ol.className = 'messages';
            ol.style.cssText = 'position: fixed; inset: 0; overflow: auto; z-index: 99';
            document.body.prepend(ol);
        }""")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def thread_time() -> float:
            metrics = cdp.send("Performance.getMetrics")["metrics"]
            return float(next(m["value"] for m in metrics if m["name"] == "ThreadTime"))

        for name, text in inputs(chars).items():
            page.evaluate(START, [text])  # warm-up: the JIT, the grammars
            page.evaluate(FINISH)
            firsts, first_cpu, totals, longest, cpu = [], [], [], [], []
            shown = 0
            for _ in range(runs):
                before = thread_time()
                firsts.append(page.evaluate(START, [text]))
                first_cpu.append((thread_time() - before) * 1000)
                total, long_task, shown = page.evaluate(FINISH)
                cpu.append((thread_time() - before) * 1000)
                totals.append(total)
                longest.append(long_task)
            rows.append({"input": name, "chars": len(text),
                         "first_ms": statistics.median(firsts),
                         "first_cpu_ms": statistics.median(first_cpu),
                         "longest_task_ms": statistics.median(longest),
                         "total_ms": statistics.median(totals), "cpu_ms": statistics.median(cpu),
                         "text_shown": shown})
        browser.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--chars", type=int, default=CHARS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = measure(args.runs, args.chars)
    missed = [r["input"] for r in rows
              if r["first_ms"] >= TARGET_MS or r["longest_task_ms"] >= TARGET_MS]
    if args.json:
        print(json.dumps({"load": load, "target_ms": TARGET_MS, "rows": rows,
                          "missed": missed}, indent=2))
    else:
        print(f"render {args.chars:,} characters in chromium, median of {args.runs} runs; "
              f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
        print(f"{'':<24}{'shown':>16}{'longest':>9}{'all in':>16}")
        print(f"{'input':<24}{'ms':>8}{'cpu ms':>8}{'task ms':>9}{'ms':>8}{'cpu ms':>8}"
              f"{'text shown':>12}")
        for r in rows:
            print(f"{r['input']:<24}{r['first_ms']:>8.1f}{r['first_cpu_ms']:>8.1f}"
                  f"{r['longest_task_ms']:>9.1f}{r['total_ms']:>8.1f}{r['cpu_ms']:>8.1f}"
                  f"{r['text_shown']:>12,}")
        worst = max(rows, key=lambda r: max(r["first_ms"], r["longest_task_ms"]))
        print(f"worst: shown in {worst['first_ms']:.1f} ms, longest task "
              f"{worst['longest_task_ms']:.1f} ms ({worst['input']}); target: shown in under "
              f"{TARGET_MS:.0f} ms and no task of {TARGET_MS:.0f} ms or more: "
              f"{'missed by ' + ', '.join(missed) if missed else 'met'}")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
