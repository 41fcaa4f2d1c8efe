"""Real OpenAI-compatible servers as they behave (llama.cpp's server, through llama-cpp-python),
modelled by tests/fake_openai.py's options: streams without usage, an empty stream when the
prompt overflows, ``tools`` ignored, ``functions.NAME:0`` tool ids every turn, and a default
API key that is just the provider's name."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import EmptyStream, FakeOpenAI, ToolCall, Turn
from fastapi.testclient import TestClient

from colloquy import Chat, EmptyCompletionError, MemoryStore, tool
from colloquy.cli import _print_cost
from colloquy.errors import ModelConnectionError
from colloquy.memory import FactExtraction, FactExtractor
from colloquy.models import get_model
from colloquy.models.openai import OpenAIModel, is_placeholder_key
from colloquy.server import create_app
from colloquy.server.errors import Redactor, status_for
from colloquy.store import SQLiteStore, Store
from colloquy.store.users import issue_token
from colloquy.tokens import TokenCounter
from colloquy.usage import Usage
from server_helpers import bearer


@pytest.fixture
def llama() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(stream_usage=False, tool_call_ids="functions") as server:
        yield server


def local(server: FakeOpenAI) -> OpenAIModel:
    return get_model("llamacpp:smollm2", environ={"LLAMACPP_BASE_URL": server.base_url},
                     max_retries=0)  # type: ignore[return-value]


# -- usage the server did not send ----------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
def test_a_reply_without_usage_is_stored_with_estimated_counts(
    llama: FakeOpenAI, store: Store, streaming: bool
) -> None:
    llama.push(Turn(text="Hello there, how can I help?", include_usage=streaming))
    chat = Chat(local(llama), store=store, title_model=False, counter=TokenCounter())
    if streaming:
        reply = [e for e in chat.stream("hi") if not isinstance(e, str)][-1]
    else:
        reply = chat.send("hi")
    assert reply.usage.estimated, "never a false zero"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.cost_usd == 0.0  # a local server is free; the counts are still shown
    # Read back from the store (a new Chat: nothing cached) the flag is still there.
    again = Chat(local(llama), store=store, session_id=chat.session_id, title_model=False)
    stored = again.history()[-1]
    assert stored.usage is not None and stored.usage.estimated
    cost = again.cost()
    assert cost.usage.estimated and cost.turns[0].usage.estimated
    out = io.StringIO()
    _print_cost(again, out)
    assert "(estimated)" in out.getvalue() and "in ~" in out.getvalue()


def test_estimated_usage_does_not_calibrate_the_estimator(llama: FakeOpenAI) -> None:
    counter = TokenCounter()
    llama.push(Turn(text="ok"))
    Chat(local(llama), store=MemoryStore(), title_model=False, counter=counter).stream("hi").__next__()
    assert counter.factor("smollm2") == 1.0


def test_usage_sums_stay_estimated() -> None:
    real, guessed = Usage(input_tokens=5), Usage(input_tokens=7, estimated=True)
    assert (real + guessed).estimated and not (real + real).estimated
    assert Usage.total([real, guessed]).describe() == "in ~12 · out ~0 (estimated)"
    assert real.describe() == "in 5 · out 0"


def test_the_api_says_estimated(llama: FakeOpenAI, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    app = create_app(store=store, model=local(llama), environ={}, rate_limit=None)
    client = TestClient(app)
    token = issue_token(store, "ada")
    llama.push(Turn(text="native", include_usage=False), Turn(text="openai route", include_usage=False))
    cid = client.post("/v1/conversations", json={"title": "t"}, headers=bearer(token)).json()["id"]
    native = client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": False},
                         headers=bearer(token))
    assert native.status_code == 200 and native.json()["usage"]["estimated"] is True
    oa = client.post("/v1/chat/completions", headers={**bearer(token), "X-Colloquy-Conversation": cid},
                     json={"messages": [{"role": "user", "content": "again"}]})
    assert oa.status_code == 200, oa.text
    assert oa.json()["usage"]["estimated"] is True and oa.json()["usage"]["prompt_tokens"] > 0
    detail = client.get(f"/v1/conversations/{cid}", headers=bearer(token)).json()
    assert detail["messages"][1]["usage"]["estimated"] is True


# -- an empty completion ---------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
def test_an_empty_completion_is_an_error_and_the_message_is_kept(
    llama: FakeOpenAI, store: Store, streaming: bool
) -> None:
    llama.push(EmptyStream())
    chat = Chat(local(llama), store=store, title_model=False)
    with pytest.raises(EmptyCompletionError, match="empty"):
        if streaming:
            list(chat.stream("a question the server cannot fit"))
        else:
            chat.send("a question the server cannot fit")
    log = chat.history()
    assert [sm.message.text for sm in log] == ["a question the server cannot fit"], \
        "the user's message is kept and no empty reply is stored"
    llama.push(Turn(text="answered"))
    assert chat.send("shorter, then").text == "answered"
    assert status_for(EmptyCompletionError("x")) == (502, "model_empty_reply")


def test_a_reply_cut_at_zero_tokens_is_not_an_empty_completion(llama: FakeOpenAI) -> None:
    llama.push(EmptyStream(finish_reason="length"))
    reply = Chat(local(llama), store=MemoryStore(), title_model=False).send("hi")
    assert reply.stop_reason == "max_tokens"


# -- a server that ignores tools --------------------------------------------------------------------


def test_fact_extraction_works_with_a_server_that_ignores_tools(tmp_path: Path) -> None:
    with FakeOpenAI(ignore_tools=True, stream_usage=False) as server:
        model = local(server)
        server.push(Turn(text="Nice to meet you, Ana."),
                    # The extractor's tool call comes back written out as JSON in text.
                    Turn(tool_calls=[ToolCall(id="c", name="record_memory", arguments=(
                        '{"operations": [{"op": "add", "subject": "home", '
                        '"statement": "lives in Lisbon"}]}'))]))
        store = SQLiteStore(tmp_path / "f.db")
        chat = Chat(model, store=store, user_id="ana", title_model=False,
                    extract_facts=FactExtraction(FactExtractor(model)))
        reply = chat.send("I'm Ana and I live in Lisbon.")
        assert reply.notes == []
        assert [f.statement for f in store.list_facts("ana")] == ["lives in Lisbon"]
        side = {s.purpose: s for s in chat.cost().side_calls}
        assert side["facts"].calls == 1 and side["facts"].usage.input_tokens == 10


def test_prose_instead_of_a_tool_call_is_retried_as_json_and_a_failure_is_billed(tmp_path: Path) -> None:
    with FakeOpenAI(ignore_tools=True) as server:
        model = local(server)
        server.push(Turn(text="Hello!"),
                    Turn(text="The user lives in Lisbon.", prompt_tokens=300, completion_tokens=9),
                    Turn(text="Sorry, I cannot do JSON.", prompt_tokens=280, completion_tokens=7))
        store = SQLiteStore(tmp_path / "f.db")
        chat = Chat(model, store=store, user_id="ana", title_model=False,
                    extract_facts=FactExtraction(FactExtractor(model)))
        reply = chat.send("I live in Lisbon.")
        assert any("fact extraction failed" in n and "may ignore tools" in n for n in reply.notes)
        assert server.requests[1].body.get("tools") and not server.requests[2].body.get("tools")
        assert store.get_memory_cursor(chat.session_id, "facts") == 0, "read again next time"
        side = {s.purpose: s for s in chat.cost().side_calls}
        assert side["facts"].usage.input_tokens == 580, "both failed calls appear in the cost"
        # Next turn: the JSON retry works, and the first message is read again.
        server.push(Turn(text="Noted."), Turn(text="no tools here"),
                    Turn(text='{"operations": [{"op": "add", "subject": "home", '
                              '"statement": "lives in Lisbon"}]}'))
        assert chat.send("Also, I like tea.").notes == []
        assert [f.statement for f in store.list_facts("ana")] == ["lives in Lisbon"]
        assert "I live in Lisbon." in server.requests[-1].body["messages"][-1]["content"]


# -- tool ids and the default key ------------------------------------------------------------------


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return "found"


def test_repeated_functions_ids_every_turn_stay_valid(llama: FakeOpenAI) -> None:
    chat = Chat(local(llama), tools=[lookup], store=MemoryStore(), title_model=False)
    for i in range(3):
        llama.push(Turn(tool_calls=[ToolCall(id="x", name="lookup", arguments='{"q": "a"}')]),
                   Turn(text=f"done {i}"))
        assert chat.send(f"look {i}").text == f"done {i}"
    sent = [c["id"] for m in llama.last.body["messages"] for c in m.get("tool_calls") or []]
    assert len(sent) == 3 == len(set(sent))


def test_the_provider_name_as_default_key_is_not_a_secret() -> None:
    assert is_placeholder_key("llamacpp") and is_placeholder_key("sk-no-key-required")
    assert not is_placeholder_key("sk-proj-abc123secret")
    redactor = Redactor(["llamacpp", "ollama-key-but-real-0123"])
    redactor.add("vllm", "EMPTY", "sk-no-key-required")
    assert redactor("llamacpp failed; vllm too") == "llamacpp failed; vllm too"
    assert redactor("key ollama-key-but-real-0123") == "key [redacted]"
    assert Redactor.from_environ({"LLAMACPP_API_KEY": "llamacpp"})("llamacpp at x") == "llamacpp at x"


def test_a_service_error_from_a_local_server_names_it(tmp_path: Path) -> None:
    model = get_model("llamacpp:smollm2", environ={"LLAMACPP_BASE_URL": "http://127.0.0.1:9/v1"},
                      max_retries=0, timeout=2.0)
    store = SQLiteStore(tmp_path / "s.db")
    client = TestClient(create_app(store=store, model=model, environ={}, rate_limit=None),
                        raise_server_exceptions=False)
    token = issue_token(store, "ada")
    cid = client.post("/v1/conversations", json={}, headers=bearer(token)).json()["id"]
    r = client.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": False},
                    headers=bearer(token))
    assert r.status_code == 504
    assert "llamacpp" in r.json()["error"]["message"] and "[redacted]" not in r.text
    with pytest.raises(ModelConnectionError, match="llamacpp"):
        Chat(model, store=MemoryStore(), title_model=False).send("hi")
