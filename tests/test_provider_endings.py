"""How a Claude reply ends, through every route (the library, sent and streamed; the CLI; the
native routes, JSON and SSE; both compatible routes through their SDKs, streamed and not), over
real HTTP to the strict fake Claude:

- an answer that ends with no content at all (an empty body; ``message_start`` then
  ``message_stop``) is a clear model error: the user's message is kept, no reply is stored, and
  the next turn goes on;
- the stop reasons of the Messages API that are not a plain ``end_turn`` (``refusal``,
  ``model_context_window_exceeded``, ``pause_turn``) and one the API may add later are stored
  and reported in the API's words, and the next turn goes on.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from colloquy import Chat
from colloquy.cli import main
from colloquy.errors import ModelError
from colloquy.models.anthropic import AnthropicModel
from colloquy.server import create_app
from colloquy.store import SQLiteStore
from colloquy.store.users import issue_token
from fake_anthropic import FakeAnthropic, Reply, either, stream_events, text
from server_helpers import bearer, parse_sse, serve_in_thread

MODEL = "claude-sonnet-4-6"
ROUTES = ["library", "library-stream", "cli", "cli-no-stream", "native", "native-stream",
          "openai", "openai-stream", "anthropic", "anthropic-stream"]
FUTURE = "a_reason_added_later"


def _start_then_stop() -> Reply:
    events = stream_events(text("x"))
    return Reply(events=[events[0], events[-1]])  # message_start, message_stop


#: The error each route gives for an answer with no content (the CLI prints its message).
KIND = {"library": "EmptyCompletionError", "native": "model_empty_reply",
        "openai": "model_empty_reply", "anthropic": "api_error"}

#: Answers that end with no content at all.
EMPTY: dict[str, Callable[[], Reply]] = {
    "empty body": lambda: Reply(events=[]),
    "message_start then message_stop": _start_then_stop,
}


@dataclass
class World:
    fake: FakeAnthropic
    store: SQLiteStore
    url: str
    token: str
    db: str  # the CLI's database
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    ids: dict[str, str] = field(default_factory=dict)  # the native routes' conversations

    def model(self) -> AnthropicModel:
        return AnthropicModel(MODEL, api_key="sk-ant-test", base_url=self.fake.base_url,
                              max_retries=0)


@dataclass
class Outcome:
    """One turn through a route: the answer and the stop reason it reported, or the error."""

    answer: str = ""
    stop: str | None = None
    error: str | None = None
    finish: str | None = None  # OpenAI's finish_reason
    stderr: str = ""  # the CLI's notes
    kind: str | None = None  # the error's class, or its type (code on the OpenAI route)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAnthropic, SQLiteStore, str, str]]:
    tmp = tmp_path_factory.mktemp("endings")
    store = SQLiteStore(tmp / "s.db")
    token = issue_token(store, "ann")
    with FakeAnthropic(title="A title") as fake:
        model = AnthropicModel(MODEL, api_key="sk-ant-test", base_url=fake.base_url,
                               max_retries=0)
        with serve_in_thread(create_app(store=store, model=model, environ={},
                                        rate_limit=None)) as url:
            yield fake, store, url, token
    store.close()


@pytest.fixture
def world(served: tuple[FakeAnthropic, SQLiteStore, str, str], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> World:
    fake, store, url, token = served
    for k in list(os.environ):
        if k.startswith(("ANTHROPIC_", "OPENAI_", "COLLOQUY_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    fake.reset()
    return World(fake, store, url, token, str(tmp_path / "cli.db"), monkeypatch, capsys)


def _name(route: str, case: str) -> str:
    return f"{route}-{case}".replace(" ", "-").replace("_", "-")


def turn(w: World, route: str, name: str, words: str) -> Outcome:
    """``words`` as the next user message of conversation ``name`` through ``route``."""
    try:
        if route.startswith("library"):
            chat = Chat(w.model(), store=w.store, session_id=name)
            if route == "library":
                reply = chat.send(words)
            else:
                *_, reply = chat.stream(words)
            return Outcome(reply.text, reply.stop_reason)
        if route.startswith("cli"):
            return _cli(w, route, name, words)
        if route.startswith("native"):
            return _native(w, route, name, words)
        if route.startswith("openai"):
            return _openai(w, route, name, words)
        return _anthropic(w, route, name, words)
    except ModelError as e:
        return Outcome(error=str(e), kind=type(e).__name__)
    except openai.APIError as e:
        return Outcome(error=str(e), kind=e.code)
    except anthropic.APIError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return Outcome(error=str(e), kind=body.get("error", body).get("type"))


def _cli(w: World, route: str, name: str, words: str) -> Outcome:
    w.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{words}\n".encode()),
                                                         encoding="utf-8"))
    w.capsys.readouterr()
    extra = ["--no-stream"] if route == "cli-no-stream" else []
    code = main(["chat", "--model", f"anthropic:{MODEL}", "--session", name, "--db", w.db,
                 *extra])
    out, err = w.capsys.readouterr()
    if code != 0:
        return Outcome(error=err, stderr=err)
    return Outcome(out.strip(), stderr=err)


def _native(w: World, route: str, name: str, words: str) -> Outcome:
    with httpx.Client(base_url=w.url, headers=bearer(w.token), timeout=30) as http:
        if name not in w.ids:
            r = http.post("/v1/conversations", json={})
            assert r.status_code == 201, r.text
            w.ids[name] = r.json()["id"]
        cid = w.ids[name]
        body: dict[str, Any] = {"content": words}
        if route == "native-stream":
            with http.stream("POST", f"/v1/conversations/{cid}/messages",
                             json={**body, "stream": True}) as r:
                r.read()
                events = parse_sse(r)
            kind, data = events[-1]
            if kind == "error":
                return Outcome(error=data["error"]["message"], kind=data["error"]["type"])
            assert kind == "done", events
            return Outcome(data["text"], data["stop_reason"])
        r = http.post(f"/v1/conversations/{cid}/messages", json=body)
        if r.status_code != 200:
            error = r.json()["error"]
            return Outcome(error=f"{r.status_code} {error['message']}", kind=error["type"])
        return Outcome(r.json()["text"], r.json()["stop_reason"])


def _openai(w: World, route: str, name: str, words: str) -> Outcome:
    client = openai.OpenAI(base_url=w.url + "/v1", api_key=w.token, max_retries=0)
    args: dict[str, Any] = dict(model=MODEL, messages=[{"role": "user", "content": words}],
                                extra_headers={"X-Colloquy-Conversation": name})
    if route == "openai-stream":
        chunks = list(client.chat.completions.create(stream=True, **args))
        last = chunks[-1]
        extension = (last.model_extra or {})["colloquy"]
        return Outcome("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                       extension["stop_reason"], finish=last.choices[0].finish_reason)
    done = client.chat.completions.create(**args)
    return Outcome(done.choices[0].message.content or "",
                   (done.model_extra or {})["colloquy"]["stop_reason"],
                   finish=done.choices[0].finish_reason)


def _anthropic(w: World, route: str, name: str, words: str) -> Outcome:
    client = anthropic.Anthropic(base_url=w.url, api_key=w.token, max_retries=0)
    args: dict[str, Any] = dict(model=MODEL, max_tokens=200, metadata={"user_id": name},
                                messages=[{"role": "user", "content": words}])
    if route == "anthropic-stream":
        with client.messages.stream(**args) as s:
            streamed = "".join(s.text_stream)
            final = s.get_final_message()
        assert streamed == "".join(b.text for b in final.content if b.type == "text")
    else:
        final = client.messages.create(**args)
    return Outcome("".join(b.text for b in final.content if b.type == "text"), final.stop_reason)


def stored(w: World, route: str, name: str) -> list[tuple[str, str, str | None]]:
    """The conversation's rows: (role, text, stop_reason)."""
    if route.startswith("cli"):
        store = SQLiteStore(w.db)
        rows = store.load(name)
        store.close()
    else:
        conv = w.store.find_named("ann", name) or w.store.find_conversation(w.ids.get(name, name))
        assert conv is not None
        rows = w.store.load(conv.id)
    return [(r.role, r.message.text, r.meta.get("stop_reason")) for r in rows]


# -- an answer with no content at all ----------------------------------------------------------


@pytest.mark.parametrize("ending", sorted(EMPTY))
@pytest.mark.parametrize("route", ROUTES)
def test_an_answer_with_no_content_is_a_clear_error_and_the_chat_goes_on(
        world: World, route: str, ending: str) -> None:
    name = _name(route, ending)
    world.fake.enqueue(EMPTY[ending](), either(text("Here again.")))
    failed = turn(world, route, name, "hello?")
    assert failed.error is not None, failed
    assert "ended with no content" in failed.error, failed.error
    assert failed.kind == KIND.get(route.split("-")[0]), failed
    assert "AssertionError" not in failed.error and "AttributeError" not in failed.error
    assert stored(world, route, name) == [("user", "hello?", None)], \
        "the user's message is kept, nothing else"
    again = turn(world, route, name, "still there?")
    assert again.error is None and again.answer == "Here again.", again
    rows = stored(world, route, name)
    assert [(role, words) for role, words, _ in rows] == [
        ("user", "hello?"), ("user", "still there?"), ("assistant", "Here again.")]


# -- stop reasons in the API's words ----------------------------------------------------------

#: What each route says of a reply that ended with this stop_reason: the note the CLI prints
#: (the CLI shows no stop_reason), OpenAI's finish_reason.
NOTE = {"refusal": "refused", "model_context_window_exceeded": "context window filled up",
        FUTURE: f"stop_reason '{FUTURE}', which colloquy does not know"}
FINISH = {"refusal": "content_filter", "model_context_window_exceeded": "length", FUTURE: "stop"}


@pytest.mark.parametrize("reason", ["refusal", "model_context_window_exceeded", FUTURE])
@pytest.mark.parametrize("route", ROUTES)
def test_a_stop_reason_is_stored_and_reported_in_the_api_s_words(
        world: World, route: str, reason: str) -> None:
    name = _name(route, reason)
    said = "" if reason == "refusal" else "The first half"
    world.fake.enqueue(either(*([text(said)] if said else []), stop_reason=reason),
                       either(text("Fine.")))
    first = turn(world, route, name, "tell me")
    assert first.error is None, first
    assert first.answer == said
    if route.startswith("cli"):
        assert NOTE[reason] in first.stderr, first.stderr
    else:
        assert first.stop == reason
    if route.startswith("openai"):
        assert first.finish == FINISH[reason]
    assert stored(world, route, name)[-1] == ("assistant", said, reason)
    again = turn(world, route, name, "go on")
    assert again.error is None and again.answer == "Fine.", again
    assert stored(world, route, name)[-1] == ("assistant", "Fine.", "end_turn")


@pytest.mark.parametrize("route", ROUTES)
def test_a_paused_turn_goes_on_and_each_part_keeps_its_stop_reason(world: World, route: str) -> None:
    name = _name(route, "pause_turn")
    world.fake.enqueue(either(text("Searching."), stop_reason="pause_turn"),
                       either(text(" Found it.")), either(text("Fine.")))
    first = turn(world, route, name, "search")
    assert first.error is None, first
    assert first.answer == "Searching. Found it."
    if not route.startswith("cli"):
        assert first.stop == "end_turn"
    rows = stored(world, route, name)
    assert rows[-2:] == [("assistant", "Searching.", "pause_turn"),
                         ("assistant", " Found it.", "end_turn")]
    sent = [r.body for r in world.fake.requests if r.body.get("model") == MODEL]
    assert sent[1]["messages"][-1] == {"role": "assistant",
                                       "content": [{"type": "text", "text": "Searching."}]}
    again = turn(world, route, name, "thanks")
    assert again.error is None and again.answer == "Fine.", again
