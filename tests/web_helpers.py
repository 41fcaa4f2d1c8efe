"""Helpers for the browser tests: Playwright driving Debian's chromium (never a browser of
Playwright's own), headless, against a server started here on loopback with an offline model.

In CI (``CI=true``) the browser tests must run: a missing chromium is a failure, not a skip.
Locally they skip only when no chromium is installed (``apt-get install chromium``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from colloquy import EchoModel, SQLiteStore
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
#: A desktop window, and a phone's (375 px wide: the narrowest common phone).
DESKTOP: dict[str, Any] = {"viewport": {"width": 1200, "height": 800}}
PHONE: dict[str, Any] = {"viewport": {"width": 375, "height": 740}, "is_mobile": True,
                         "has_touch": True}
SCREENS = {"desktop": DESKTOP, "phone": PHONE}


def chromium_path() -> str:
    path = os.environ.get("COLLOQUY_TEST_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if path and Path(path).exists():
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("CI must run the browser test: install Debian's chromium and export "
                    "COLLOQUY_TEST_CHROMIUM=/usr/bin/chromium")
    pytest.skip("no chromium installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Site:
    def __init__(self, url: str, store: SQLiteStore, token: str, model: Any = None) -> None:
        self.url, self.store, self.token, self.model = url, store, token, model


@contextmanager
def serve_site(tmp_path: Path, model: Any = None, **options: Any) -> Iterator[Site]:
    """The service over a fresh SQLite store with one user, ada, on loopback."""
    store = SQLiteStore(tmp_path / "web.db")
    token = issue_token(store, "ada")
    model = model if model is not None else EchoModel(delay=0.04)
    options.setdefault("rate_limit", None)
    app = create_app(store=store, model=model, environ={}, **options)
    with serve_in_thread(app) as url:
        yield Site(url, store, token, model)
    store.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # A small delay between streamed words, so the page visibly streams.
    with serve_site(tmp_path) as s:
        yield s


def sign_in(page: Any, site: Site, hash: str = "") -> None:
    page.goto(site.url + "/" + hash)
    page.fill("#token", site.token)
    page.press("#token", "Enter")
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'input'")


class Watched:
    """A page and the errors it logged (console errors, uncaught exceptions, native dialogs:
    the page must never use prompt/confirm/alert)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

        def refuse(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", refuse)


@contextmanager
def open_page(browser: Any, site: Site, screen: str = "desktop", hash: str = "",
              **context: Any) -> Iterator[Watched]:
    """A fresh browser context of ``screen`` size, signed in; closed afterwards. Fails the test
    if the page logged an error or opened a native dialog."""
    ctx = browser.new_context(**{**SCREENS[screen], **context})
    try:
        watched = Watched(ctx.new_page())
        sign_in(watched.page, site, hash)
        yield watched
        assert watched.dialogs == [], watched.dialogs
        # The browser logs each refused request; the tests provoke those on purpose.
        assert [e for e in watched.errors if not e.startswith("Failed to load resource")] == [], \
            watched.errors
    finally:
        ctx.close()


def send(page: Any, text: str) -> Any:
    """Type the message and send it as a person would on this screen (Enter on a keyboard, the
    Send button on a touch screen); wait for the reply's token line; return the reply."""
    before = page.locator("#messages > .message.assistant").count()
    page.fill("#input", text)
    if page.evaluate("window.matchMedia('(pointer: coarse)').matches"):
        page.click("#send")
    else:
        page.press("#input", "Enter")
    reply = page.locator("#messages > .message.assistant").nth(before)
    reply.locator(".turn-meta").filter(has_text="tokens").wait_for()
    return reply


def menu(page: Any, button: str) -> None:
    """Click one of the header's account actions (inside the menu on a narrow screen)."""
    if page.locator("#menu-button").is_visible():
        page.click("#menu-button")
    page.click(button)
