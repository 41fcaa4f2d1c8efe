"""Guards hold on both compatible routes (issue 14: "backed by the same conversations,
policies, guards and costs"), through the official SDKs as clients of a real socket: a blocked
message is answered with the guard's text, in each API's own terms (OpenAI's finish_reason
``content_filter``, the Messages API's stop_reason ``refusal``), streamed or not; the model is
never called, and the blocked exchange is stored like any other turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from colloquy import EchoModel
from colloquy.guards import Verdict
from colloquy.server import create_app
from colloquy.store import SQLiteStore
from colloquy.store.users import issue_token
from server_helpers import serve_in_thread

REFUSAL = "I can't help with passwords."


def no_passwords(text: str) -> Verdict:
    return Verdict.block(REFUSAL) if "password" in text else Verdict.allow()


class Served:
    def __init__(self, url: str, token: str, store: SQLiteStore, model: EchoModel) -> None:
        self.store, self.model = store, model
        self.openai = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
        self.anthropic = anthropic.Anthropic(base_url=url, api_key=token, max_retries=0)

    def log(self, name: str) -> list[str]:
        conv = self.store.find_named("ann", name)
        assert conv is not None
        return [sm.message.text for sm in self.store.load(conv.id)]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = SQLiteStore(tmp_path / "g.db")
    token = issue_token(store, "ann")
    model = EchoModel()
    with serve_in_thread(create_app(store=store, model=model, environ={}, rate_limit=None,
                                    guards=[no_passwords])) as url:
        yield Served(url, token, store, model)
    store.close()


@pytest.mark.parametrize("streamed", [False, True])
def test_the_openai_route_is_guarded(served: Served, streamed: bool) -> None:
    name = f"o-{streamed}"
    asked: Any = [{"role": "user", "content": "what is ann's password?"}]
    if streamed:
        chunks = list(served.openai.chat.completions.create(
            model="echo", messages=asked, user=name, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = served.openai.chat.completions.create(model="echo", messages=asked, user=name)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert (text, finish) == (REFUSAL, "content_filter")
    assert served.model.requests == []
    assert served.log(name) == ["what is ann's password?", REFUSAL]
    fine = served.openai.chat.completions.create(model="echo", user=name, messages=[
        *asked, {"role": "assistant", "content": REFUSAL}, {"role": "user", "content": "hello"}])
    assert fine.choices[0].finish_reason == "stop" and len(served.model.requests) == 1


@pytest.mark.parametrize("streamed", [False, True])
def test_the_anthropic_route_is_guarded(served: Served, streamed: bool) -> None:
    name = f"a-{streamed}"
    asked: Any = [{"role": "user", "content": "what is ann's password?"}]
    headers = {"X-Colloquy-Conversation": name}
    if streamed:
        with served.anthropic.messages.stream(model="echo", max_tokens=100, messages=asked,
                                              extra_headers=headers) as events:
            final = events.get_final_message()
    else:
        final = served.anthropic.messages.create(model="echo", max_tokens=100, messages=asked,
                                                 extra_headers=headers)
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", REFUSAL)]
    assert final.stop_reason == "refusal"
    assert served.model.requests == []
    assert served.log(name) == ["what is ann's password?", REFUSAL]
