"""Fields the compatible routes accept but do not act on (``response_format``,
``stop``/``stop_sequences``, ``top_p``, ``top_k``, ``seed``...) are named in the reply's
``colloquy.notes``, streamed or not, through the official SDKs: a client that relies on one (a
JSON mode) can see it was not honoured. A request without them has no such
note; ``tool_choice`` is honoured (tests/test_compat_tool_choice.py), so never named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from colloquy import EchoModel
from colloquy.server import create_app
from colloquy.store import SQLiteStore
from colloquy.store.users import issue_token
from server_helpers import serve_in_thread

HI: Any = [{"role": "user", "content": "hi"}]
NOTE = "not acted on by colloquy"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[tuple[str, str]]:
    store = SQLiteStore(tmp_path / "i.db")
    token = issue_token(store, "ann")
    with serve_in_thread(create_app(store=store, model=EchoModel(), environ={},
                                    rate_limit=None)) as u:
        yield u, token
    store.close()


@pytest.mark.parametrize("streamed", [False, True])
def test_the_openai_route_names_what_it_ignored(url: tuple[str, str], streamed: bool) -> None:
    client = openai.OpenAI(base_url=url[0] + "/v1", api_key=url[1], max_retries=0)
    asked: dict[str, Any] = {"model": "echo", "messages": HI, "user": f"o{streamed}",
                             "tool_choice": "required", "parallel_tool_calls": False,
                             "tools": [{"type": "function", "function": {"name": "f"}}],
                             "top_p": 0.5, "seed": 7,
                             "response_format": {"type": "json_object"}}
    if streamed:
        chunks = list(client.chat.completions.create(**asked, stream=True))
        notes = [n for c in chunks for n in ((c.model_extra or {}).get("colloquy") or {}).get(
            "notes", [])]
    else:
        notes = (client.chat.completions.create(**asked).model_extra or {})["colloquy"]["notes"]
    [note] = [n for n in notes if NOTE in n]
    assert note.endswith("(accepted and ignored): response_format, seed, top_p")
    plain = client.chat.completions.create(model="echo", messages=HI, user="plain")
    assert not any(NOTE in n for n in (plain.model_extra or {})["colloquy"]["notes"])


@pytest.mark.parametrize("streamed", [False, True])
def test_the_anthropic_route_names_what_it_ignored(url: tuple[str, str], streamed: bool) -> None:
    client = anthropic.Anthropic(base_url=url[0], api_key=url[1], max_retries=0)
    asked: dict[str, Any] = {"model": "echo", "max_tokens": 100, "messages": HI,
                             "metadata": {"user_id": f"a{streamed}"}, "extra_body": {"top_k": 3},
                             "stop_sequences": ["END"], "tool_choice": {"type": "any"},
                             "tools": [{"name": "f", "input_schema": {"type": "object"}}]}
    if streamed:
        with client.messages.stream(**asked) as events:
            deltas = [e for e in events if e.type == "message_delta"]
        notes = (deltas[-1].model_extra or {})["colloquy"]["notes"]
    else:
        notes = (client.messages.create(**asked).model_extra or {})["colloquy"]["notes"]
    assert [n for n in notes if NOTE in n] == [
        "not acted on by colloquy (accepted and ignored): stop_sequences, top_k"]
    plain = client.messages.create(model="echo", max_tokens=100, messages=HI)
    assert not any(NOTE in n for n in (plain.model_extra or {})["colloquy"]["notes"])
