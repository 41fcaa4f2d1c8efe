"""How the page renders messages, in Debian's chromium: GitHub-flavoured Markdown by the vendored
libraries (marked, DOMPurify, highlight.js), markup that must never run, and large adversarial
messages (the inputs of bench/render.py, which measures their speed; here only correctness)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from web_helpers import ROOT, Site, browser, open_page, send, serve_site, site  # noqa: F401

MARKDOWN = """Plan for **Lisbon**, ~~by car~~ by train:

| day | what | cost |
|---|:---:|--:|
| 1 | Alfama | €0 |
| 2 | Sintra | €5 |

1. Book the train
   - from Rossio
     - at 9:00
2. Pack light

- [x] flights
- [ ] hotel

```python
def budget(days: int) -> int:
    return days * 80
```

See [the timetable](https://example.com/trains).
"""

#: Markup and links that must never run, however they are written.
HOSTILE = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    "<svg onload=\"window.__xss=3\"></svg>",
    '<a href="javascript:window.__xss=4">raw link</a>',
    "[md link](javascript:window.__xss=5)",
    "[spaced](  JaVaScRiPt:window.__xss=6)",
    "[entity](&#106;avascript:window.__xss=7)",
    "[tabbed](java\tscript:window.__xss=8)",
    "<javascript:window.__xss=9>",
    "![image](javascript:window.__xss=10)",
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3M9MTE8L3NjcmlwdD4=)",
    '<iframe src="javascript:window.__xss=12"></iframe>',
    "[vb](vbscript:msgbox(1))",
    '<div style="background:url(javascript:window.__xss=13)">styled</div>',
    "```\n</code></pre><img src=x onerror=window.__xss=14>\n```",
    '<math><mtext><table><mglyph><style><img src=x onerror="window.__xss=15">',
]


def bench_inputs() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("bench_render", ROOT / "bench" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.inputs()  # type: ignore[no-any-return]


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_github_flavoured_markdown(browser: Any, site: Site, screen: str) -> None:
    with open_page(browser, site, screen) as w:
        page = w.page
        send(page, MARKDOWN)
        mine = page.locator("#messages > .message.user .body").first
        assert mine.locator("table th").all_inner_texts() == ["day", "what", "cost"]
        assert mine.locator("table tbody tr").count() == 2
        assert mine.locator("del").inner_text() == "by car"
        assert mine.locator("ol > li > ul > li > ul > li").inner_text() == "at 9:00"
        boxes = mine.locator("input[type=checkbox]")
        assert boxes.count() == 2 and boxes.nth(0).is_checked() and not boxes.nth(1).is_checked()
        assert boxes.nth(0).is_disabled()
        code = mine.locator("pre code.language-python")
        assert code.locator(".hljs-keyword").first.inner_text() == "def"
        link = mine.locator("a", has_text="the timetable")
        assert link.get_attribute("href") == "https://example.com/trains"
        assert link.get_attribute("target") == "_blank"
        assert "noopener" in (link.get_attribute("rel") or "")
        # Nothing overflows the screen sideways (a wide table scrolls inside the bubble).
        assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_markup_and_links_never_run(browser: Any, site: Site) -> None:
    with open_page(browser, site) as w:
        page = w.page
        for text in HOSTILE:
            send(page, text)
        page.wait_for_timeout(300)  # let anything that would run, run
        assert page.evaluate("window.__xss") is None
        messages = page.locator("#messages")
        assert messages.locator("script, img, svg, iframe, object, embed, style, math").count() == 0
        hrefs = messages.locator("a[href]").evaluate_all("els => els.map(a => a.getAttribute('href'))")
        assert all(not h.strip().lower().replace("\t", "").startswith(("javascript:", "vbscript:", "data:"))
                   for h in hrefs), hrefs
        handlers = messages.evaluate("""root => [...root.querySelectorAll('*')].flatMap(el =>
            [...el.attributes].filter(a => a.name.startsWith('on') || a.name === 'style')
            .map(a => el.tagName + ' ' + a.name))""")
        assert handlers == []
        # Raw markup stays readable as text.
        assert "<script>window.__xss=2</script>" in messages.inner_text()


def test_large_adversarial_messages_render_right(browser: Any, site: Site) -> None:
    """Every input of bench/render.py (32,000 characters each) renders completely, with its
    text on the page; a parser's deep recursion falls back to plain text, not to an error."""
    inputs = bench_inputs()
    with open_page(browser, site) as w:
        page = w.page
        results = page.evaluate("""async (inputs) => {
            const out = {};
            for (const [name, text] of Object.entries(inputs)) {
                const body = document.createElement('div');
                body.className = 'body';
                document.getElementById('messages').appendChild(body);
                const finished = await window.colloquyRender.into(body, text);
                out[name] = {finished, text: body.textContent,
                             scripts: body.querySelectorAll('script, img, iframe').length};
                body.remove();
            }
            return out;
        }""", inputs)
    assert set(results) == set(inputs)
    for name, r in results.items():
        assert r["finished"] is True and r["scripts"] == 0, name
    # Text that is not Markdown syntax reaches the page whole.
    for name, char in (("angle brackets", "<"), ("html tags", "<"), ("brackets", "["),
                       ("one long word", "a"), ("pipes", "|"), ("nested quotes", ">")):
        assert results[name]["text"].count(char) >= 32_000 * (0.2 if name == "html tags" else 1), name
    assert results["many lines"]["text"].count("a") == 16_000
    assert results["code block"]["text"].count("compute(value") == inputs["code block"].count(
        "compute(value")
    assert results["long reply"]["text"].count("The plan for step") >= 30


def test_a_32000_character_reply_streams_and_shows(browser: Any, tmp_path: Path) -> None:
    """The service's largest message, sent from the page: it renders, the reply streams, and
    the page stays usable (the next message goes through)."""
    long = bench_inputs()["long reply"]
    from colloquy import EchoModel

    with serve_site(tmp_path, EchoModel(words=4000)) as s, open_page(browser, s) as w:
        page = w.page
        page.fill("#input", long)
        page.press("#input", "Enter")
        page.locator("#messages > .message.assistant .turn-meta", has_text="tokens").wait_for(
            timeout=60_000)
        # Long messages render in pieces: wait for the last piece, then count what it made.
        last = re.findall(r"def (step_\d+)\(", long)[-1]
        page.wait_for_function("""(last) => {
            const b = document.querySelector('#messages > .message.user .body');
            return b.textContent.includes(last + '(');
        }""", arg=last)
        mine = page.locator("#messages > .message.user .body").first
        assert mine.locator("table").count() >= 30
        send(page, "still responsive?")
        assert page.locator("#messages > .message").count() == 4


#: Every kind of container block marked nests (CommonMark's block quotes and list items, each
#: list marker), mixed too: nested hundreds deep, each must fall back to plain text.
NESTING_MARKERS = ["1. ", "1) ", "10. ", "- ", "* ", "+ ", "> ", "> 1. ", "1. - "]


@pytest.mark.parametrize("marker", NESTING_MARKERS)
def test_deep_nesting_of_any_container_is_shown_as_plain_text(browser: Any, site: Site,
                                                              marker: str) -> None:
    text = "\n".join(marker * 500 + f"x{i}" for i in range(21))
    with open_page(browser, site) as w:
        r = w.page.evaluate("""async (text) => {
            const body = document.createElement('div');
            document.getElementById('messages').appendChild(body);
            await window.colloquyRender.into(body, text);
            let deepest = 0;
            for (const el of body.querySelectorAll('li, blockquote')) {
                let d = 0;
                for (let p = el; p && p !== body; p = p.parentElement)
                    if (p.tagName === 'LI' || p.tagName === 'BLOCKQUOTE') d++;
                deepest = Math.max(deepest, d);
            }
            const shown = body.textContent;
            body.remove();
            return {deepest, shown};
        }""", text)
    assert r["deepest"] <= 2 * 25, (marker, r["deepest"])
    assert all(f"x{i}" in r["shown"] for i in range(21)), marker


@pytest.mark.parametrize("header_chars", [32_000, 16_000, 700, 300])
def test_a_wide_table_is_cut_into_small_pieces(browser: Any, site: Site, header_chars: int) -> None:
    """A piece's size counts the table header it repeats, and a long header is not repeated:
    pieces stay near PIECE characters (1,000) and their sum near the message's length."""
    columns = header_chars // 4
    text = "|" + "a|" * columns + "\n|" + "-|" * columns + "\n"
    text += ("|" + "x|" * columns + "\n") * ((32_000 - len(text)) // (2 * columns + 2))
    with open_page(browser, site) as w:
        pieces = w.page.evaluate("(text) => window.colloquyRender.split(text)", text)
    assert max(map(len, pieces)) <= 3 * 1_000 + 100, sorted(map(len, pieces))[-3:]
    assert sum(map(len, pieces)) <= 2 * len(text)
    assert "".join(pieces).count("x") == text.count("x")
    if header_chars <= 500:  # a short header is repeated: every piece is a table
        assert all(p.startswith(text.split("\n")[0]) for p in pieces)
