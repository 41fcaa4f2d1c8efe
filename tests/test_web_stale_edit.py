"""An edit box on the page never replaces a message it was not opened on, in Debian's chromium:
a new turn closes an open edit box, and an edit sent from a tab that missed a message sent
elsewhere (another tab, a phone) is refused by the server (409 edit_conflict): the page says so
and shows the conversation as stored, with nothing replaced."""

from __future__ import annotations

from typing import Any

from colloquy import Chat, EchoModel
from web_helpers import Site, browser, open_page, send, site  # noqa: F401


def user_texts(site: Site, cid: str) -> list[str]:
    return [sm.message.text for sm in site.store.load(cid) if sm.role == "user"]


def test_a_new_turn_closes_an_open_edit_box(browser: Any, site: Site) -> None:
    with open_page(browser, site) as w:
        page = w.page
        send(page, "first message")
        page.locator("#messages > .message.user .edit-message").last.click()
        page.fill(".edit-input", "EDITED FIRST")
        send(page, "second message")
        assert page.locator(".edit-form").count() == 0
        cid = site.store.list_conversations(user_id="ada")[0].id
        assert user_texts(site, cid) == ["first message", "second message"]


def test_an_edit_from_a_stale_tab_is_refused_and_replaces_nothing(browser: Any, site: Site) -> None:
    with open_page(browser, site) as w:
        page = w.page
        send(page, "first message")
        cid = site.store.list_conversations(user_id="ada")[0].id
        page.locator("#messages > .message.user .edit-message").last.click()
        page.fill(".edit-input", "EDITED FIRST")
        # Meanwhile, from a phone: another message in the same conversation.
        Chat(EchoModel(), store=site.store, session_id=cid, user_id="ada").send("from the phone")
        page.locator(".edit-form button[type=submit]").click()
        page.locator("#chat-error", has_text="no longer the newest").wait_for()
        page.locator("#messages > .message.user .body", has_text="from the phone").wait_for()
        assert user_texts(site, cid) == ["first message", "from the phone"]
        assert page.locator(".edit-form").count() == 0
        # The Regenerate button names its reply too: from the refreshed page it is current.
        page.locator("#messages > .message.assistant .regenerate").last.click()
        page.locator("#messages > .earlier summary", has_text="regenerated").wait_for()
        assert user_texts(site, cid) == ["first message", "from the phone", "from the phone"]
