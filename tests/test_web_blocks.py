"""Claude's content model on the page (issue 15 item 7, on issue 14's blocks), in Debian's
chromium on a desktop window and a 375 px phone: thinking streamed as its own events and shown
collapsed, live and after a reload; server tools (web search, code execution) as compact blocks
with their results; documents and search results in a user's message; the sources a reply cites.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from colloquy import (
    Chat,
    DocumentBlock,
    EchoModel,
    ModelResponse,
    ScriptedModel,
    SearchResultBlock,
    ServerToolResultBlock,
    ServerToolUseBlock,
    TextBlock,
    Usage,
)
from web_helpers import Site, browser, open_page, send, serve_site  # noqa: F401

SCREENS = ["desktop", "phone"]


@pytest.mark.parametrize("screen", SCREENS)
def test_thinking_streams_collapsed_and_stays_collapsed_after_a_reload(
    browser: Any, tmp_path: Path, screen: str,
) -> None:
    # The echo model thinks first when given a budget, as Claude does (server: --thinking).
    with serve_site(tmp_path, EchoModel(delay=0.03, words=60), thinking=2048) as s, \
            open_page(browser, s, screen) as w:
        page = w.page
        # What the streaming reply showed, at each change of the page while it streamed.
        page.evaluate("""() => {
            window.__live = [];
            new MutationObserver(() => {
                const reply = document.querySelector('.message.assistant.streaming');
                if (!reply) return;
                const t = reply.querySelector('details.thinking');
                window.__live.push({thinking: !!t, open: !!(t && t.open),
                                    answer: reply.querySelector('.body').textContent.length});
            }).observe(document.getElementById('messages'),
                       {childList: true, subtree: true, characterData: true});
        }""")
        reply = send(page, "plan my week")
        # While the answer still streamed, the thinking already sat in the reply, folded.
        live = page.evaluate("() => window.__live")
        assert any(s["thinking"] and s["answer"] == 0 for s in live), live[:5]
        assert not any(s["open"] for s in live)
        body = reply.locator(".body").inner_text()
        assert "plan my week" in body and "2048 tokens" not in body  # thinking is not the answer
        shown = reply.locator("details.thinking")
        assert shown.count() == 1 and shown.get_attribute("open") is None
        shown.locator("summary").click()
        shown.locator(".thinking-body", has_text="up to 2048 tokens").wait_for()  # rendered on opening
        # From the stored log: the same, still folded until opened.
        page.reload()
        page.wait_for_selector("#app:not([hidden])")
        stored = page.locator("#messages > .message.assistant details.thinking")
        stored.wait_for()
        assert stored.count() == 1 and stored.get_attribute("open") is None
        assert page.locator("#messages > .message").count() == 2
        stored.locator("summary").click()
        stored.locator(".thinking-body", has_text="up to 2048 tokens").wait_for()  # rendered on opening
        assert "2048 tokens" not in page.locator("#messages > .message.assistant .body").inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def searched_reply() -> ModelResponse:
    """What Claude answers with its web search tool: the call, the provider's result (encrypted
    content the page must not show), a code run, and text citing a search hit."""
    hits = [{"type": "web_search_result", "url": "https://example.org/lisbon-trams",
             "title": "Lisbon trams", "encrypted_content": "SECRETxyz", "page_age": "2 days"},
            {"type": "web_search_result", "url": "https://example.org/tram-28",
             "title": "Tram 28 times", "encrypted_content": "SECRETabc"}]
    cite = {"type": "web_search_result_location", "url": "https://example.org/lisbon-trams",
            "title": "Lisbon trams", "encrypted_index": "SECRETidx", "cited_text": "Tram 28 runs"}
    return ModelResponse(content=[
        ServerToolUseBlock(id="srvtoolu_1", name="web_search", input={"query": "lisbon tram 28"}),
        ServerToolResultBlock(type="web_search_tool_result", tool_use_id="srvtoolu_1",
                              content=hits),
        ServerToolUseBlock(id="srvtoolu_2", name="code_execution", input={"code": "print(6*7)"}),
        ServerToolResultBlock(type="code_execution_tool_result", tool_use_id="srvtoolu_2",
                              content={"type": "code_execution_result", "stdout": "42\n",
                                       "stderr": "", "return_code": 0}),
        ServerToolUseBlock(id="srvtoolu_3", name="web_fetch", input={"url": "https://x.invalid"}),
        ServerToolResultBlock(type="web_fetch_tool_result", tool_use_id="srvtoolu_3",
                              content={"type": "web_fetch_tool_error", "error_code": "url_not_accessible"}),
        TextBlock(text="Tram **28** runs every 12 minutes.", citations=[cite, cite]),
    ], usage=Usage(input_tokens=900, output_tokens=60))


@pytest.mark.parametrize("screen", SCREENS)
def test_server_tools_documents_and_citations_are_compact_blocks(
    browser: Any, tmp_path: Path, screen: str,
) -> None:
    with serve_site(tmp_path, ScriptedModel([searched_reply()])) as s:
        Chat(s.model, store=s.store, session_id="c_search", user_id="ada").send([
            DocumentBlock(source={"type": "text", "media_type": "text/plain",
                                  "data": "Day 1: Alfama. Day 2: Belem."}, title="itinerary.txt"),
            SearchResultBlock(source="https://example.org/guide", title="Tram guide",
                              content=[TextBlock(text="Tram 28 crosses the old town.")]),
            TextBlock(text="When does tram 28 run?"),
        ])
        with open_page(browser, s, screen, hash="#c_search") as w:
            page = w.page
            reply = page.locator("#messages > .message.assistant").first
            reply.locator(".body", has_text="every 12 minutes").wait_for()
            assert page.locator("#messages > .message").count() == 2
            # Each server tool call is one folded line with its name, its input and its outcome.
            tools = reply.locator("details.tool.server")
            assert tools.count() == 3
            assert all(tools.nth(i).get_attribute("open") is None for i in range(3))
            search, run, fetch = (tools.nth(i) for i in range(3))
            line = search.locator("summary").inner_text()
            assert "web_search" in line and "lisbon tram 28" in line and "done" in line
            assert "server" in line
            search.locator("summary").click()
            result = search.locator(".tool-result").inner_text()
            assert "Lisbon trams — https://example.org/lisbon-trams" in result
            assert "Tram 28 times — https://example.org/tram-28" in result
            run.locator("summary").click()
            assert run.locator(".tool-result").inner_text().strip() == "42"
            assert "error" in fetch.locator("summary").inner_text()
            fetch.locator("summary").click()
            assert "url_not_accessible" in fetch.locator(".tool-result").inner_text()
            # The sources the text cites: once each, folded.
            sources = reply.locator("details.citations")
            assert sources.count() == 1 and sources.get_attribute("open") is None
            assert sources.locator(".tool-args").inner_text() == "1"
            sources.locator("summary").click()
            assert "https://example.org/lisbon-trams" in sources.inner_text()
            # The user's document and search result: folded, titled, their text when opened.
            mine = page.locator("#messages > .message.user").first
            assert mine.locator(".body").inner_text().strip() == "When does tram 28 run?"
            doc = mine.locator("details.other", has_text="itinerary.txt")
            hit = mine.locator("details.other", has_text="Tram guide")
            assert doc.get_attribute("open") is None and hit.get_attribute("open") is None
            doc.locator("summary").click()
            assert doc.locator("pre").inner_text() == "Day 1: Alfama. Day 2: Belem."
            hit.locator("summary").click()
            assert hit.locator("pre").inner_text() == "Tram 28 crosses the old town."
            # Encrypted content is sent back to the provider, never shown.
            assert "SECRET" not in page.locator("#messages").inner_text()
            assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
