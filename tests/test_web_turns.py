"""What people do with messages on the page, in Debian's chromium, on a desktop window and a
375 px phone: copy, edit and resend, regenerate, see what the model saw, in-page dialogs, refused
sends, the cost line of a model that reported no usage, tool calls and thinking."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from colloquy import (
    Chat,
    EchoModel,
    FunctionGuard,
    FunctionModel,
    ModelResponse,
    ScriptedModel,
    TextBlock,
    Usage,
    tool_call,
)
from colloquy.context.presets import preset
from colloquy.memory.records import Fact
from web_helpers import ARTIFACTS, Site, browser, menu, open_page, send, serve_site, site  # noqa: F401

SCREENS = ["desktop", "phone"]


def clipboard(page: Any) -> str:
    return str(page.evaluate("navigator.clipboard.readText()"))


@pytest.mark.parametrize("screen", SCREENS)
def test_copy_a_message_and_a_code_block(browser: Any, site: Site, screen: str) -> None:
    with open_page(browser, site, screen, permissions=["clipboard-read", "clipboard-write"]) as w:
        page = w.page
        text = "Run this:\n\n```bash\necho 'hello' | wc -c\n```\n\nthen **report**."
        reply = send(page, text)
        mine = page.locator("#messages > .message.user").first
        mine.locator(".copy-message").click()
        mine.locator(".copy-message", has_text="Copied").wait_for()
        assert clipboard(page) == text  # the message as written, Markdown and all
        mine.locator(".copy-code").click()
        assert clipboard(page) == "echo 'hello' | wc -c"
        reply.locator(".copy-message").click()
        assert clipboard(page).startswith("echo: received 1 message")


@pytest.mark.parametrize("screen", SCREENS)
def test_edit_and_regenerate_keep_the_log_append_only(browser: Any, site: Site, screen: str) -> None:
    with open_page(browser, site, screen) as w:
        page = w.page
        send(page, "first question")
        send(page, "my code word is SECRET-A")
        cid = site.store.list_conversations(user_id="ada")[0].id
        # Only the newest user message can be edited, only the newest reply regenerated.
        live = page.locator("#messages > .message")
        assert live.nth(0).locator(".edit-message").is_hidden()
        assert live.nth(1).locator(".regenerate").is_hidden()
        # Regenerate: a new answer; the old pair folds into "Earlier version (regenerated)".
        live.nth(3).locator(".regenerate").click()
        page.locator("#messages > .earlier summary", has_text="regenerated").wait_for()
        page.locator("#messages > .message.assistant").nth(1).locator(
            ".turn-meta", has_text="tokens").wait_for()
        assert page.locator("#messages > .message").count() == 4
        # Edit the newest message and send it.
        live.nth(2).locator(".edit-message").click()
        editor = page.locator(".edit-input")
        assert editor.input_value() == "my code word is SECRET-A"
        editor.fill("my code word is REPLACED")
        page.locator(".edit-form button[type=submit]").click()
        page.locator("#messages > .message.user .body", has_text="REPLACED").wait_for()
        page.locator("#messages > .message.assistant .body", has_text="REPLACED").wait_for()
        page.locator("#messages > .message.assistant .turn-meta", has_text="tokens").nth(1).wait_for()
        assert page.locator("#messages > .earlier").count() == 2
        assert "SECRET-A" not in page.locator("#messages > .message").all_inner_texts()[-1]
        # Append-only: every row is still there, the replaced ones named by the new messages.
        log = site.store.load(cid)
        assert [sm.message.text for sm in log if sm.role == "user"] == [
            "first question", "my code word is SECRET-A", "my code word is SECRET-A",
            "my code word is REPLACED"]
        assert log[4].meta["supersedes"] == [3, 4] and log[6].meta["supersedes"] == [5, 6]
        assert "SECRET-A" not in json.dumps(site.model.last_request.model_dump(mode="json"))
        # A reload shows the same: the current branch, the earlier versions folded.
        page.reload()
        page.locator("#messages > .message.user .body", has_text="REPLACED").wait_for()
        assert page.locator("#messages > .earlier").count() == 2
        assert page.locator("#messages > .message").count() == 4
        page.locator("#messages > .earlier summary").first.click()
        page.locator("#messages > .earlier .message .body", has_text="SECRET-A").first.wait_for()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"web-edit-{screen}.png"))


@pytest.mark.parametrize("screen", SCREENS)
def test_what_the_model_saw(browser: Any, tmp_path: Path, screen: str) -> None:
    policy = preset("memory", max_input_tokens=700, summary={"min_new_turns": 2})
    with serve_site(tmp_path, EchoModel(), policy=policy) as s:
        s.store.add_fact(Fact(user_id="ada", subject="travel", statement="prefers trains"))
        with open_page(browser, s, screen) as w:
            page = w.page
            for i in range(9):
                send(page, f"turn {i}: trains from Lisbon to Porto, hotels near the station {i}")
            reply = send(page, "which trains did we talk about?")
            reply.locator(".show-context").click()
            panel = page.locator("#context-dialog")
            panel.locator(".cost-table").wait_for()
            text = panel.inner_text()
            for part in ("Persona", "Remembered facts", "prefers trains", "Summary of earlier messages",
                         "Messages sent", "Fresh input", "Cache write", "Cache read", "Output"):
                assert part in text, part
            box = panel.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]
            page.screenshot(path=str(ARTIFACTS / f"web-context-{screen}.png"))
            # The record was stored with the reply: a fact forgotten since is not shown again.
            s.store.forget_facts("ada")
            page.click("#close-context")
            reply.locator(".show-context").click()
            panel.locator("text=a fact forgotten since").wait_for()
            assert "prefers trains" not in panel.inner_text()
            page.click("#close-context")


@pytest.mark.parametrize("screen", SCREENS)
def test_rename_and_delete_use_in_page_dialogs(browser: Any, site: Site, screen: str) -> None:
    # open_page fails the test if the page opens a native prompt/confirm/alert.
    with open_page(browser, site, screen) as w:
        page = w.page
        send(page, "plan a trip")
        page.click("#rename-chat")
        dialog = page.locator("#rename-dialog")
        assert dialog.is_visible()
        page.fill("#rename-input", "Lisbon in May")
        page.click("#rename-ok")
        page.locator("#chat-title", has_text="Lisbon in May").wait_for()
        assert site.store.list_conversations(user_id="ada")[0].title == "Lisbon in May"
        page.click("#delete-chat")
        summary = page.locator("#delete-chat-dialog")
        assert "Lisbon in May" in summary.inner_text() and "2 messages" in summary.inner_text()
        summary.locator("button[value=cancel]").click()
        assert len(site.store.list_conversations(user_id="ada")) == 1
        page.click("#delete-chat")
        page.click("#delete-chat-ok")
        page.locator("#chat-title", has_text="New chat").wait_for()
        assert site.store.list_conversations(user_id="ada") == []


@pytest.mark.parametrize("screen", SCREENS)
def test_a_refused_send_leaves_no_ghost_bubbles_and_says_why(browser: Any, tmp_path: Path,
                                                             screen: str) -> None:
    """413 (too long), 422 (refused), 429 (rate limit) and a network failure: nothing was
    stored, so no bubble stays behind, the text is back in the box and the error says why;
    the same for an edit."""
    with serve_site(tmp_path, EchoModel(), max_message_chars=40) as s, \
            open_page(browser, s, screen) as w:
        page = w.page
        send(page, "hello")
        cid = s.store.list_conversations(user_id="ada")[0].id

        def refused(text: str, says: str) -> None:
            page.fill("#input", text)
            page.click("#send")
            page.locator("#chat-error", has_text=says).wait_for()
            page.wait_for_function("() => !document.getElementById('send').hidden")
            assert page.locator("#messages > .message").count() == 2
            assert page.input_value("#input") == text

        refused("x" * 60, "the limit is 40")
        for status, body, says in (
            (422, {"error": {"type": "invalid_request", "message": "the message is empty"}},
             "the message is empty"),
            (429, {"error": {"type": "rate_limited", "message": "rate limit reached"}},
             "try again in 3 s"),
        ):
            page.route("**/messages", refuse_with(status, body))
            refused(f"refused with {status}", says)
            page.unroute("**/messages")
        page.route("**/messages", lambda route: route.abort("internetdisconnected"))
        refused("offline", "could not reach the server")
        page.unroute("**/messages")
        # An edit refused: the old message comes back, nothing is folded away.
        page.locator("#messages > .message.user .edit-message").click()
        page.fill(".edit-input", "y" * 60)
        page.locator(".edit-form button[type=submit]").click()
        page.locator("#chat-error", has_text="the limit is 40").wait_for()
        assert page.locator("#messages > .earlier").count() == 0
        assert page.locator("#messages > .message").count() == 2
        assert [sm.message.text for sm in s.store.load(cid) if sm.role == "user"] == ["hello"]
        page.fill(".edit-input", "hello again")
        page.locator(".edit-form button[type=submit]").click()
        page.locator("#messages > .message.user .body", has_text="hello again").wait_for()
        assert page.inner_text("#chat-error") == ""


def refuse_with(status: int, body: dict[str, Any]) -> Any:
    """A Playwright route handler answering every request with this error."""
    def handler(route: Any, request: Any = None) -> None:
        route.fulfill(status=status, content_type="application/json",
                      headers={"Retry-After": "3"}, body=json.dumps(body))
    return handler


def _no_usage(request: Any) -> ModelResponse:
    return ModelResponse(content=[TextBlock(text="an answer without usage")], usage=Usage(),
                         model="local-llm", stop_reason="end_turn")


@pytest.mark.parametrize("screen", SCREENS)
def test_a_model_that_reports_no_usage_never_shows_zero_cost(browser: Any, tmp_path: Path,
                                                            screen: str) -> None:
    with serve_site(tmp_path, FunctionModel(_no_usage)) as s, open_page(browser, s, screen) as w:
        page = w.page
        page.fill("#input", "hello")
        page.click("#send")
        reply = page.locator("#messages > .message.assistant").first
        reply.locator(".turn-meta", has_text="usage not reported").wait_for()
        for line in (reply.locator(".turn-meta").inner_text(), page.inner_text("#session-cost")):
            assert "0 tokens" not in line and "$0.000000" not in line, line
        page.reload()
        reply.locator(".turn-meta", has_text="usage not reported").wait_for()
        assert "0 tokens" not in page.inner_text("#session-cost")


@pytest.mark.parametrize("screen", SCREENS)
def test_tool_calls_are_compact_expandable_blocks(browser: Any, site: Site, screen: str) -> None:
    def lookup(city: str) -> str:
        """The weather in a city."""
        return f"sunny, 24C in {city}"

    model = ScriptedModel([tool_call("lookup", {"city": "Lisbon"}), "It is **sunny** there."])
    Chat(model, store=site.store, session_id="c_tools", user_id="ada", tools=[lookup]).send(
        "weather in Lisbon?")
    with open_page(browser, site, screen, hash="#c_tools") as w:
        page = w.page
        reply = page.locator("#messages > .message.assistant").first
        reply.locator(".body", has_text="sunny").wait_for()
        assert page.locator("#messages > .message").count() == 2  # one turn, one reply bubble
        tool = reply.locator("details.tool")
        assert tool.count() == 1 and tool.get_attribute("open") is None
        summary = tool.locator("summary").inner_text()
        assert "lookup" in summary and "Lisbon" in summary and "done" in summary
        assert not tool.locator(".tool-result").is_visible()
        tool.locator("summary").click()
        assert tool.locator(".tool-result").inner_text() == "sunny, 24C in Lisbon"
        assert json.loads(tool.locator(".tool-input").inner_text()) == {"city": "Lisbon"}
        # Usage and cost of both model calls of the turn, on the one reply.
        assert "tokens" in reply.locator(".turn-meta").inner_text()


@pytest.mark.parametrize("screen", SCREENS)
def test_stop_cuts_the_reply_and_the_server_keeps_what_was_written(browser: Any, tmp_path: Path,
                                                                    screen: str) -> None:
    """Stop while a reply streams: the page closes the request, the server stops the model call
    and stores the reply so far (stop_reason "cancelled", colloquy.effects); the page shows it
    as stored, marked stopped, and Send is back."""
    words = 400  # at 50 ms a word: 20 s for the whole reply, cut after a few words
    with serve_site(tmp_path, EchoModel(delay=0.05, words=words)) as s, \
            open_page(browser, s, screen) as w:
        page = w.page
        page.fill("#input", "tell me a long story")
        page.click("#send")
        page.wait_for_function("""() => {
            const b = document.querySelector('#messages > .message.assistant .body');
            return b && b.textContent.length > 60; }""")
        page.locator("#stop").click()
        answer = page.locator("#messages > .message.assistant").last
        answer.locator(".turn-meta", has_text="stopped").wait_for()
        cid = s.store.list_conversations(user_id="ada")[0].id
        # The page marks the reply stopped as soon as it closes the request; the server stores
        # the reply so far when its cancellation reaches the turn, a moment later.
        deadline = time.monotonic() + 10
        while (last := s.store.load(cid)[-1]).role != "assistant" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.role == "assistant" and last.meta["stop_reason"] == "cancelled"
        # Billed for what was generated (the echo model reports none: colloquy's estimate).
        assert last.usage is not None and last.usage.output_tokens > 0 and last.usage.estimated
        kept = last.message.text
        assert 60 <= len(kept) and len(kept.split()) < words
        # The page shows the reply as stored (the server keeps what came until the model call
        # was cut, a little more than the page had drawn), marked stopped.
        page.wait_for_function("""kept => {
            const all = document.querySelectorAll('#messages > .message.assistant .body');
            return all.length && all[all.length - 1].innerText.trim() === kept; }""", arg=kept.strip())
        answer.locator(".turn-meta", has_text="stopped ·").wait_for()
        assert page.locator("#stop").is_hidden() and page.locator("#send").is_visible()


def test_an_unanswered_message_can_be_regenerated_after_a_reload(browser: Any,
                                                                 tmp_path: Path) -> None:
    """A reply that failed leaves the user's message stored without one: after a reload the
    page offers Regenerate on that message (not only Edit or retyping), and counts say
    "1 message", not "1 messages"."""
    outcomes: list[str | None] = [None, "the answer at last"]

    def flaky(request: Any) -> str:
        step = outcomes.pop(0)
        if step is None:
            raise ConnectionError("the provider dropped the connection")
        return step

    with serve_site(tmp_path, FunctionModel(flaky)) as s, open_page(browser, s) as w:
        page = w.page
        page.fill("#input", "where is my parcel?")
        page.press("#input", "Enter")
        page.locator(".message.assistant.failed .turn-meta", has_text="send again").wait_for()
        page.locator(".conversation .meta", has_text="1 message ·").wait_for()
        page.reload()
        page.wait_for_selector("#app:not([hidden])")
        mine = page.locator("#messages > .message.user")
        mine.wait_for()
        assert page.locator("#messages > .message.assistant").count() == 0
        mine.locator(".regenerate").click()
        reply = page.locator("#messages > .message.assistant")
        reply.locator(".turn-meta", has_text="tokens").wait_for()
        assert "the answer at last" in reply.inner_text()
        assert page.locator("#messages > .message.user").all_inner_texts()[0].count(
            "where is my parcel?") == 1
        (conv,) = s.store.list_conversations(user_id="ada")
        log = s.store.load(conv.id)
        assert [(sm.role, sm.message.text) for sm in log][-2:] == [
            ("user", "where is my parcel?"), ("assistant", "the answer at last")]
        reply.locator(".show-context").click()
        panel = page.locator("#context-dialog")
        panel.locator(".seen-part", has_text="Messages sent").wait_for()
        text = panel.inner_text()
        assert "1 message," in text and "1 messages" not in text, text
        page.click("#close-context")


def _flaky(*answers: str | None) -> FunctionModel:
    """A model whose first call fails (the provider dropped the connection), then gives these
    answers in turn (None: fails again)."""
    outcomes: list[str | None] = [None, *answers]

    def answer(request: Any) -> str:
        step = outcomes.pop(0)
        if step is None:
            raise ConnectionError("the provider dropped the connection")
        return step
    return FunctionModel(answer)


def _press_send(page: Any) -> None:
    """Send what is in the box as a person would on this screen."""
    if page.evaluate("window.matchMedia('(pointer: coarse)').matches"):
        page.click("#send")
    else:
        page.press("#input", "Enter")


def _fail_once(page: Any, text: str) -> None:
    page.fill("#input", text)
    _press_send(page)
    page.locator(".message.assistant.failed .turn-meta", has_text="send again").wait_for()
    page.wait_for_function("() => !document.getElementById('send').hidden")


def _reloaded_offer(page: Any, text: str) -> None:
    """After a reload (or in a new tab): the message is offered again, its text in the box."""
    page.wait_for_selector("#app:not([hidden])")
    page.locator("#messages > .message.user .turn-meta", has_text="send again").wait_for()
    page.wait_for_function("t => document.getElementById('input').value === t", arg=text)


@pytest.mark.parametrize("screen", SCREENS)
def test_a_failed_message_sent_again_after_a_reload_is_stored_once(browser: Any, tmp_path: Path,
                                                                  screen: str) -> None:
    """The page keeps the message waiting for a reply (conversation, text, idempotency key)
    in this tab's sessionStorage: after a reload it offers the message again (its text back
    in the box, "send again" on it), and sending it, even retyped, carries the first key, so
    the server finishes the first attempt's turn and the message is stored once."""
    text = "where is my parcel?"
    with serve_site(tmp_path, _flaky("the answer at last", "a second answer")) as s, \
            open_page(browser, s, screen) as w:
        page = w.page
        _fail_once(page, text)
        page.reload()
        _reloaded_offer(page, text)
        page.fill("#input", "")
        page.fill("#input", text)  # retyped: the same message
        _press_send(page)
        page.locator("#messages > .message.assistant .body", has_text="the answer at last").wait_for()
        assert page.input_value("#input") == ""
        assert page.locator("#messages > .message.user").count() == 1
        assert page.locator("#messages .failed, #messages > .earlier").count() == 0
        assert "send again" not in page.inner_text("#messages")
        (conv,) = s.store.list_conversations(user_id="ada")
        log = s.store.load(conv.id)
        assert [(sm.role, sm.message.text) for sm in log] == [
            ("user", text), ("assistant", "the answer at last")]
        assert str(log[0].meta.get("idempotency_key", "")).startswith("web-")
        assert page.evaluate("sessionStorage.getItem('colloquy.pending')") is None
        # Answered: a reload offers nothing.
        page.reload()
        page.locator("#messages > .message.assistant").wait_for()
        assert page.input_value("#input") == ""


def test_a_failed_message_opened_in_another_tab_is_answered_once(browser: Any,
                                                                 tmp_path: Path) -> None:
    """A tab that does not know the message's key (another tab, a new window) offers it again
    too, and sends it as the regeneration of that message: answered once, the message shown
    once (the stored attempt folded as an earlier version), no second copy in the context."""
    text = "where is my parcel?"
    with serve_site(tmp_path, _flaky("the answer at last")) as s:
        with open_page(browser, s) as w:
            _fail_once(w.page, text)
            cid = s.store.list_conversations(user_id="ada")[0].id
        with open_page(browser, s, "phone", hash="#" + cid) as w:
            page = w.page
            _reloaded_offer(page, text)
            _press_send(page)
            page.locator("#messages > .message.assistant .body",
                         has_text="the answer at last").wait_for()
            assert page.locator("#messages > .message.user").count() == 1
            assert page.input_value("#input") == ""
        chat = Chat(EchoModel(), store=s.store, session_id=cid)
        sent = chat.build_context().messages
        assert [(m.role, m.text) for m in sent] == [("user", text), ("assistant", "the answer at last")]


def test_a_reload_while_the_server_is_unreachable_keeps_the_token_and_the_waiting_message(
        browser: Any, tmp_path: Path) -> None:
    """attack7 F5: the page signed out on any failure of its first request after a (re)load,
    a network error or a 5xx alike: a reload while the server restarted (often why a reply had
    just failed) removed the saved token and forgot the message waiting to be sent again. Only
    a 401 signs out now; otherwise the sign-in form says what failed, the token in it, and
    signing in again offers the waiting message as before."""
    text = "where is my parcel?"
    with serve_site(tmp_path, _flaky("the answer at last")) as s, \
            open_page(browser, s) as w:
        page = w.page
        _fail_once(page, text)
        page.route("**/v1/me", lambda route: route.abort())  # the server is restarting
        page.reload()
        page.wait_for_selector("#signin:not([hidden])")
        page.locator("#signin-error", has_text="could not reach the server").wait_for()
        assert page.evaluate("localStorage.getItem('colloquy.token')") == s.token
        assert page.evaluate("sessionStorage.getItem('colloquy.pending')") is not None
        page.unroute("**/v1/me")
        assert page.input_value("#token") == s.token
        page.press("#token", "Enter")  # the server is back
        _reloaded_offer(page, text)
        _press_send(page)
        page.locator("#messages > .message.assistant .body", has_text="the answer at last").wait_for()
        (conv,) = s.store.list_conversations(user_id="ada")
        assert [sm.role for sm in s.store.load(conv.id)] == ["user", "assistant"]


def test_a_deleted_conversation_or_signing_out_forgets_the_waiting_message(
        browser: Any, tmp_path: Path) -> None:
    def waiting() -> Any:
        return page.evaluate("JSON.parse(sessionStorage.getItem('colloquy.pending'))")

    with serve_site(tmp_path, _flaky(None)) as s, open_page(browser, s) as w:
        page = w.page
        _fail_once(page, "first")
        assert [p["text"] for p in waiting().values()] == ["first"]
        page.click("#delete-chat")
        page.click("#delete-chat-ok")
        page.locator("#chat-title", has_text="New chat").wait_for()
        page.wait_for_function("() => sessionStorage.getItem('colloquy.pending') === null")
        assert page.input_value("#input") == ""  # its text went with it
        _fail_once(page, "second")
        assert [p["text"] for p in waiting().values()] == ["second"]
        menu(page, "#signout")
        page.wait_for_selector("#signin:not([hidden])")
        assert waiting() is None


@pytest.mark.parametrize("screen", SCREENS)
def test_a_blocked_message_adds_nothing_to_the_bill(browser: Any, tmp_path: Path,
                                                    screen: str) -> None:
    """An input guard's answer made no model call: its line says so (not "usage not reported
    · cost unknown"), and the conversation's cost stays known, while streamed and reloaded."""
    guard = FunctionGuard(lambda text: "password" not in text, name="no_passwords")
    with serve_site(tmp_path, EchoModel(), guards=[guard]) as s, open_page(browser, s, screen) as w:
        page = w.page
        send(page, "hello")
        page.fill("#input", "my password is hunter2")
        if screen == "phone":
            page.click("#send")
        else:
            page.press("#input", "Enter")
        blocked = page.locator("#messages > .message.assistant").nth(1)
        for _ in range(2):  # streamed, then as stored
            blocked.locator(".body", has_text="Sorry").wait_for()
            page.wait_for_function("() => !document.getElementById('send').hidden")
            assert "price unknown" not in page.inner_text("#session-cost")
            assert "$0.000000" in page.inner_text("#session-cost")
            assert "no model call" in blocked.locator(".turn-meta").inner_text()
            assert "cost unknown" not in blocked.inner_text()
            page.reload()
            page.wait_for_selector("#app:not([hidden])")


def _estimated(request: Any) -> ModelResponse:
    return ModelResponse(content=[TextBlock(text="an answer with estimated usage")],
                         usage=Usage(input_tokens=40, output_tokens=6, estimated=True),
                         model="local-llm", stop_reason="end_turn")


def test_a_cost_of_estimated_usage_is_marked_estimated_on_the_conversation_too(
        browser: Any, tmp_path: Path) -> None:
    with serve_site(tmp_path, FunctionModel(_estimated)) as s, open_page(browser, s) as w:
        page = w.page
        reply = send(page, "hello")
        assert "~$" in reply.locator(".turn-meta").inner_text()
        page.wait_for_function("() => document.getElementById('session-cost').textContent"
                               ".includes('estimated')")
        assert "~$" in page.inner_text("#session-cost"), page.inner_text("#session-cost")


@pytest.mark.parametrize("screen", SCREENS)
def test_a_turn_with_one_unreported_call_shows_no_dollar_figure(browser: Any, site: Site,
                                                                 screen: str) -> None:
    """A turn of two model calls, the second without usage: its line and the conversation's
    say "price unknown", never "$0" beside it (tests/test_cost_unknown.py for the rest)."""
    from test_cost_unknown import lookup, two_rounds

    Chat(two_rounds(), store=site.store, session_id="c_half", user_id="ada",
         tools=[lookup]).send("weather in Lisbon?")
    with open_page(browser, site, screen, hash="#c_half") as w:
        page = w.page
        line = page.locator("#messages > .message.assistant .turn-meta").first
        line.filter(has_text="tokens").wait_for()
        for text in (line.inner_text(), page.inner_text("#session-cost")):
            assert "price unknown" in text and "$" not in text, text


def test_a_refused_message_sent_again_leaves_an_older_unanswered_one_in_view(
        browser: Any, tmp_path: Path) -> None:
    """A message whose reply failed, then another refused before anything was stored (429)
    and sent again: the first stays shown (it is stored), the second is answered after it."""
    with serve_site(tmp_path, _flaky("the second answer")) as s, open_page(browser, s) as w:
        page = w.page
        _fail_once(page, "first question")
        page.fill("#input", "second question")
        page.route("**/messages", refuse_with(
            429, {"error": {"type": "rate_limited", "message": "rate limit reached"}}))
        page.press("#input", "Enter")
        page.locator("#chat-error", has_text="try again").wait_for()
        page.unroute("**/messages")
        assert page.input_value("#input") == "second question"
        page.press("#input", "Enter")
        page.locator("#messages > .message.assistant .body", has_text="the second answer").wait_for()
        users = page.locator("#messages > .message.user .body").all_inner_texts()
        assert users == ["first question", "second question"], users
        (conv,) = s.store.list_conversations(user_id="ada")
        assert [(sm.role, sm.message.text) for sm in s.store.load(conv.id)] == [
            ("user", "first question"), ("user", "second question"),
            ("assistant", "the second answer")]
