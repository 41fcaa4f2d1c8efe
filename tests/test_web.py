"""The web chat page in a real browser (Playwright driving Debian's chromium, see
tests/web_helpers.py): the whole life of a user, on a desktop window and a phone's screen."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from colloquy import FunctionModel
from colloquy.memory.records import Fact
from web_helpers import (  # noqa: F401
    ARTIFACTS, PHONE, ROOT, Site, browser, send, serve_site, sign_in, site)

XSS = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script>"


def test_chat_in_the_browser(browser: Any, site: Site) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # Sign in: a wrong token is refused, the right one opens the app with the input focused.
    page.goto(site.url + "/")
    page.fill("#token", "cq_wrong")
    page.click("#signin-button")
    page.locator("#signin-error").filter(has_text="not accepted").wait_for()
    errors.clear()  # the refused sign-in logs its 401 to the console
    page.fill("#token", site.token)
    page.press("#token", "Enter")
    page.wait_for_selector("#app:not([hidden])")
    assert page.inner_text("#whoami") == "ada"
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'input'")

    # Send: the reply streams in (seen mid-stream), then shows its tokens and cost.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const body = document.querySelector('.message.assistant.streaming .body');
            if (body) window.__lengths.push(body.textContent.length);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#input", "Plan **a trip** to `Lisbon`")
    page.press("#input", "Enter")
    reply = page.locator(".message.assistant").first
    reply.locator(".turn-meta").filter(has_text="tokens").wait_for()
    # The reply grew piece by piece on screen before it was complete.
    lengths = sorted(set(page.evaluate("() => window.__lengths")) - {0})
    final = len(reply.locator(".body").inner_text())
    assert len(lengths) >= 3 and lengths[0] < final / 2, lengths
    assert "last user text" in reply.locator(".body").inner_text()
    assert "$0.000000" in reply.locator(".turn-meta").inner_text()
    user = page.locator(".message.user").first
    assert user.locator("strong").inner_text() == "a trip"
    assert user.locator("code").inner_text() == "Lisbon"
    page.locator(".conversation .title", has_text="Plan").wait_for()

    # Markdown is rendered safely: markup from the user or the model stays text.
    reply = send(page, XSS)
    assert page.locator("#messages img, #messages script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert "<img src=x" in page.locator(".message.user .body").nth(1).inner_text()
    assert "<script>" in reply.locator(".body").inner_text()

    # Shift+Enter is a new line, Enter sends.
    page.fill("#input", "line one")
    page.press("#input", "Shift+Enter")
    page.type("#input", "line two")
    assert page.input_value("#input") == "line one\nline two"
    page.press("#input", "Enter")
    page.locator(".message.assistant").nth(2).locator(".turn-meta").filter(has_text="tokens").wait_for()
    assert page.locator(".message.user .body").nth(2).inner_text().splitlines() == ["line one", "line two"]

    # A second conversation; switching back shows the first one's history.
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    send(page, "Second conversation here")
    page.locator(".conversation").nth(1).wait_for()
    assert page.locator(".conversation").count() == 2
    page.locator(".conversation", has_text="Plan").click()
    page.locator(".message.user", has_text="a trip").wait_for()
    assert page.locator(".message.user").count() == 3

    # Reload: still signed in, same conversation, history from the server.
    page.reload()
    page.locator(".message.user", has_text="a trip").wait_for()
    assert page.locator(".message.assistant .turn-meta", has_text="tokens").count() == 3
    assert "tokens" in page.inner_text("#session-cost")

    # A second device (a fresh browser context) sees the same list.
    other = browser.new_context(viewport={"width": 1000, "height": 700}).new_page()
    sign_in(other, site)
    other.locator(".conversation").nth(1).wait_for()
    assert sorted(other.locator(".conversation .title").all_inner_texts()) == sorted(
        page.locator(".conversation .title").all_inner_texts())
    other.context.close()

    # What the model remembers: facts listed, one added by hand, one forgotten.
    site.store.add_fact(Fact(user_id="ada", subject="travel", statement="prefers trains to planes"))
    page.click("#show-memory")
    page.locator("#facts li", has_text="prefers trains to planes").wait_for()
    page.fill("#fact-subject", "food")
    page.fill("#fact-statement", "is vegetarian")
    page.press("#fact-statement", "Enter")
    page.locator("#facts li", has_text="is vegetarian").wait_for()
    page.click("button[aria-label='Forget: prefers trains to planes']")
    page.locator("#facts li", has_text="prefers trains").wait_for(state="detached")
    assert [f.statement for f in site.store.list_facts("ada")] == ["is vegetarian"]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"))
    assert errors == []
    # Export my data: a JSON download of everything held about the user.
    with page.expect_download() as download:
        page.click("#export-data")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["user_id"] == "ada" and len(exported["sessions"]) == 2
    assert "is vegetarian" in json.dumps(exported)

    # Delete my data: a confirmation that must be typed, then everything (and the token) is gone.
    page.click("#delete-data")
    assert page.locator("#confirm-ok").is_disabled()
    page.fill("#confirm-input", "delete")
    page.click("#confirm-ok")
    page.locator("#signin-error", has_text="All your data was deleted").wait_for()
    assert site.store.list_conversations(user_id="ada") == []
    assert site.store.list_facts("ada") == []
    page.fill("#token", site.token)
    page.press("#token", "Enter")
    page.locator("#signin-error", has_text="not accepted").wait_for()
    assert [e for e in errors if "401" not in e] == []
    context.close()


def test_phone_sized_screen(browser: Any, site: Site) -> None:
    """A 375 px phone with a touch keyboard: the header's actions collapse into one menu,
    "Delete my data" is behind that menu and a dialog naming what goes, the placeholder does
    not promise "Enter sends" and Enter is a new line there."""
    context = browser.new_context(**PHONE)
    page = context.new_page()
    sign_in(page, site)
    placeholder = page.get_attribute("#input", "placeholder") or ""
    assert "Enter" not in placeholder
    page.fill("#input", "line one")
    page.press("#input", "Enter")
    page.type("#input", "line two")
    assert page.input_value("#input") == "line one\nline two"  # a new line, nothing sent
    assert page.locator(".message").count() == 0
    page.click("#send")
    page.locator(".message.assistant .turn-meta", has_text="tokens").wait_for()
    send(page, "hello from a phone")
    # Nothing overflows sideways; the sidebar is a drawer behind a toggle.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert not page.locator("#sidebar").is_visible()  # a drawer, closed until opened
    page.click("#toggle-sidebar")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().x >= 0")
    page.locator(".conversation", has_text="line one").wait_for()
    assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "true"
    page.locator(".conversation", has_text="line one").click()
    page.wait_for_function("() => getComputedStyle(document.getElementById('sidebar')).visibility"
                           " === 'hidden'")
    box = page.locator("#send").bounding_box()
    assert box["x"] + box["width"] <= 375 and box["y"] + box["height"] <= 740
    # The header holds one menu button; no account action is one tap away.
    for action in ("#show-memory", "#export-data", "#signout", "#delete-data"):
        assert not page.locator(action).is_visible(), action
    page.click("#menu-button")
    assert page.get_attribute("#menu-button", "aria-expanded") == "true"
    for action in ("#show-memory", "#export-data", "#signout", "#delete-data"):
        box = page.locator(action).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, action
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-phone-menu.png"))
    page.keyboard.press("Escape")
    assert not page.locator("#delete-data").is_visible()
    # Delete my data: menu, then a dialog that names what goes; cancelling deletes nothing.
    site.store.add_fact(Fact(user_id="ada", subject="travel", statement="prefers trains"))
    page.click("#menu-button")
    page.click("#delete-data")
    summary = page.locator("#delete-summary")
    summary.filter(has_text="1 conversation (4 messages)").wait_for()
    text = summary.inner_text()
    assert "1 remembered fact," in text and "account ada" in text, text
    assert page.locator("#confirm-ok").is_disabled()
    page.click("#confirm-cancel")
    assert len(site.store.list_conversations(user_id="ada")) == 1
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"))
    context.close()


def test_a_message_sent_again_after_a_failed_stream_is_stored_once(browser: Any,
                                                                   tmp_path: Path) -> None:
    """The page sends one idempotency key per message and reuses it when the same message is
    sent again, so the server finishes the first attempt's turn instead of storing it twice."""
    outcomes: list[str | None] = [None, "the answer at last", "a second answer"]

    def flaky(request: Any) -> str:
        step = outcomes.pop(0)
        if step is None:
            raise ConnectionError("the provider dropped the connection")
        return step

    with serve_site(tmp_path, FunctionModel(flaky)) as site:
        store = site.store
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        page = context.new_page()
        sign_in(page, site)
        page.fill("#input", "where is my parcel?")
        page.press("#input", "Enter")
        page.locator(".message.assistant.failed .turn-meta", has_text="send again").wait_for()
        # ready to send again (the text comes back with the failure; polled, as the page
        # may paint the failure a frame before it refills the box)
        page.wait_for_function(
            "() => document.getElementById('input').value === 'where is my parcel?'")
        page.wait_for_function("() => !document.getElementById('send').hidden")
        page.press("#input", "Enter")
        page.locator(".message.assistant .body", has_text="the answer at last").wait_for()
        # The page shows what the server stored: the message once, the failed reply gone.
        shown = page.locator("#messages > .message")
        assert shown.all_inner_texts()[0].count("where is my parcel?") == 1
        assert page.locator("#messages > .message.user").count() == 1
        assert page.locator("#messages .message.failed").count() == 0
        send(page, "and my refund?")
        (conv,) = store.list_conversations(user_id="ada")
        log = store.load(conv.id)
        assert [(sm.role, sm.message.text) for sm in log] == [
            ("user", "where is my parcel?"), ("assistant", "the answer at last"),
            ("user", "and my refund?"), ("assistant", "a second answer")]
        keys = [sm.meta.get("idempotency_key") for sm in log if sm.role == "user"]
        assert all(k and k.startswith("web-") for k in keys) and keys[0] != keys[1]
        context.close()


DEMO_REPLY = """Two days in **Lisbon** by train, as you prefer:

| day | plan | cost |
|---|---|--:|
| 1 | Alfama and the castle, tram 28 | €12 |
| 2 | Sintra by train from Rossio | €5 |

- [x] flights booked
- [ ] hotel near Rossio

```python
def budget(days: int, per_day: int = 80) -> int:
    return days * per_day  # euros
```
"""


def test_the_readme_screenshot(browser: Any, tmp_path: Path) -> None:
    """The picture in the README: a conversation with thinking (folded), a tool call (opened),
    a table, a task list and code, its actions and costs. ``COLLOQUY_UPDATE_SCREENSHOT=1``
    writes docs/screenshot-chat.png."""
    from colloquy import Chat, ModelResponse, ScriptedModel, ThinkingBlock, Usage, tool_call

    def weather(city: str) -> str:
        """The weather forecast for a city."""
        return f"sunny, 24°C in {city}"

    with serve_site(tmp_path) as site:
        thought = ThinkingBlock(thinking="Two days, by train: check the weather first.",
                                signature="sig")
        model = ScriptedModel([
            ModelResponse(content=[thought, tool_call("weather", {"city": "Lisbon"})],
                          stop_reason="tool_use", usage=Usage(input_tokens=52, output_tokens=31)),
            DEMO_REPLY])
        old = Chat(ScriptedModel(["Porto in spring: mild, some rain."]), store=site.store,
                   session_id="c_porto", user_id="ada")
        old.send("What is Porto like in April?")
        site.store.update_conversation("c_porto", title="Porto in April")
        Chat(model, store=site.store, session_id="c_demo", user_id="ada",
             tools=[weather]).send("Plan two days in Lisbon for me, with costs.")
        site.store.update_conversation("c_demo", title="Two days in Lisbon")
        context = browser.new_context(viewport={"width": 1200, "height": 1000})
        page = context.new_page()
        sign_in(page, site, "#c_demo")
        page.locator("#messages .body table").wait_for()
        page.locator("details.thinking").wait_for()
        page.locator("details.tool summary").click()
        page.locator(".tool-result").wait_for()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "screenshot-chat.png"))
        if os.environ.get("COLLOQUY_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(ROOT / "docs" / "screenshot-chat.png"))
        context.close()
