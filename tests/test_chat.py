"""The chat engine: one turn stores the user's message, builds a valid request, calls the model
and stores the reply with its usage; failures keep the user's message and the next turn works.
Also the offline models the engine is tested with (EchoModel, ScriptedModel, FunctionModel)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from colloquy import Chat, Reply
from colloquy.context import FullHistory, RollingWindow, problems
from colloquy.errors import (
    ColloquyError,
    ConfigError,
    ModelConnectionError,
    ModelError,
    OverloadedError,
    RateLimitError,
)
from colloquy.messages import Message, TextBlock, ToolUseBlock
from colloquy.models import (
    EchoModel,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    ScriptedModel,
    TextDelta,
    get_model,
    tool_call,
)
from colloquy.store import MemoryStore, SQLiteStore, Store
from colloquy.tokens import TokenCounter
from colloquy.usage import Price, Usage

PERSONA = "You are a pirate. Answer in one line."


def roles(request: ModelRequest) -> list[str]:
    return [m.role for m in request.messages]


def assert_sendable(request: ModelRequest) -> None:
    assert problems(request.messages) == []
    assert request.messages[0].role == "user"
    assert all(a.role != b.role for a, b in zip(request.messages, request.messages[1:]))


# -- one turn ---------------------------------------------------------------------------------------


def test_send_stores_the_turn_and_returns_the_reply(store: Store, counter: TokenCounter) -> None:
    model = EchoModel()
    chat = Chat(model, system=PERSONA, store=store, session_id="s1", counter=counter)
    assert chat.conversation is None and chat.history() == []
    reply = chat.send("ahoy")
    assert isinstance(reply, Reply)
    assert reply.text.startswith("echo: received 1 message ")
    assert reply.text.endswith("last user text: 'ahoy'")
    assert reply.conversation_id == "s1" and reply.seq == 2 and reply.rounds == 1
    assert reply.model == "echo" and reply.stop_reason == "end_turn"
    assert reply.message == Message.assistant(reply.text)

    log = store.load("s1")
    assert [(sm.seq, sm.role, sm.message.text) for sm in log] == [
        (1, "user", "ahoy"), (2, "assistant", reply.text)]
    conv = store.get_conversation("s1")
    assert (conv.persona, conv.model, conv.last_seq) == (PERSONA, "echo", 2)
    assert chat.conversation is not None and chat.conversation.id == "s1"
    assert [sm.seq for sm in chat.history()] == [1, 2]

    reply2 = chat.send("and again")
    assert reply2.seq == 4
    assert roles(model.last_request) == ["user", "assistant", "user"]
    assert reply2.text.startswith("echo: received 3 messages")


def test_the_system_prompt_goes_beside_the_messages_never_in_them(store: Store) -> None:
    model = EchoModel()
    chat = Chat(model, system=PERSONA, store=store, counter=TokenCounter())
    chat.send("hi")
    chat.send("who are you?")
    req = model.last_request
    assert req.system == [TextBlock(text=PERSONA)]
    assert all(PERSONA not in m.text for m in req.messages)
    assert all(PERSONA not in sm.message.text for sm in store.load(chat.session_id))
    assert req.to_anthropic()["system"] == [{"type": "text", "text": PERSONA}]


def test_a_session_id_is_generated_when_none_is_given(store: Store) -> None:
    a = Chat(EchoModel(), store=store)
    b = Chat(EchoModel(), store=store)
    assert a.session_id != b.session_id
    a.send("x")
    assert store.get_conversation(a.session_id).last_seq == 2
    assert store.find_conversation(b.session_id) is None, "nothing stored before the first turn"


def test_the_user_message_is_stored_before_the_model_is_called(store: Store) -> None:
    seen: list[list[str]] = []

    def answer(req: ModelRequest) -> str:
        seen.append([sm.message.text for sm in store.load("s")])
        return "reply"

    chat = Chat(FunctionModel(answer), store=store, session_id="s", counter=TokenCounter())
    chat.send("first")
    chat.send("second")
    assert seen == [["first"], ["first", "reply", "second"]]


def test_the_reply_is_stored_with_usage_cost_and_model(store: Store) -> None:
    name = "claude-sonnet-4-5-20250929"
    usage = Usage(input_tokens=1200, output_tokens=300, cache_write_tokens=400, cache_read_tokens=9000)
    model = ScriptedModel([ModelResponse(
        content=[TextBlock(text="Arr.")], usage=usage, model=name, stop_reason="end_turn")], name=name)
    model.provider = "anthropic"  # the double stands in for Claude: priced as Claude (offline: $0)
    chat = Chat(model, store=store, session_id="s", counter=TokenCounter())
    reply = chat.send("hello")
    expected = Price.anthropic(3.0, 15.0).cost(usage)
    assert expected == pytest.approx((1200 * 3 + 300 * 15 + 400 * 3.75 + 9000 * 0.3) / 1e6)
    assert reply.usage == usage
    assert reply.cost_usd == pytest.approx(expected)
    user, asst = store.load("s")
    assert user.usage is None and user.cost_usd is None and user.model is None
    assert asst.message == Message.assistant("Arr.")
    assert asst.usage == usage
    assert asst.model == name
    assert asst.cost_usd == pytest.approx(expected)
    assert asst.meta["stop_reason"] == "end_turn"


def test_temperature_and_max_tokens_are_per_chat(store: Store) -> None:
    hot = EchoModel()
    Chat(hot, store=store, temperature=0.9, max_tokens=77, counter=TokenCounter()).send("x")
    cold = EchoModel()
    Chat(cold, store=store, temperature=0.0, max_tokens=4096, counter=TokenCounter()).send("y")
    default = EchoModel()
    Chat(default, store=store, counter=TokenCounter()).send("z")
    assert (hot.last_request.temperature, hot.last_request.max_tokens) == (0.9, 77)
    assert (cold.last_request.temperature, cold.last_request.max_tokens) == (0.0, 4096)
    assert (default.last_request.temperature, default.last_request.max_tokens) == (None, 1024)
    body = hot.last_request.to_anthropic()
    assert body["temperature"] == 0.9 and body["max_tokens"] == 77
    assert cold.last_request.to_anthropic()["temperature"] == 0.0
    assert "temperature" not in default.last_request.to_anthropic()


def test_user_input_may_be_a_message_or_blocks(store: Store) -> None:
    model = EchoModel()
    chat = Chat(model, store=store, counter=TokenCounter())
    chat.send(Message.user("as a message"))
    chat.send([TextBlock(text="as "), TextBlock(text="blocks")])
    assert [sm.message.text for sm in chat.history() if sm.role == "user"] == ["as a message", "as blocks"]
    with pytest.raises(ValueError):
        chat.send("   ")
    with pytest.raises(ValueError):
        chat.send(Message.assistant("not a user turn"))
    assert len(chat.history()) == 4, "a refused input stores nothing"


def test_next_request_shows_the_request_without_sending_or_storing(store: Store) -> None:
    model = EchoModel()
    chat = Chat(model, system=PERSONA, store=store, session_id="s", counter=TokenCounter(),
                temperature=0.3)
    chat.send("one")
    req = chat.next_request("two")
    assert roles(req) == ["user", "assistant", "user"]
    assert req.messages[-1] == Message.user("two")
    assert req.system == [TextBlock(text=PERSONA)] and req.temperature == 0.3
    assert len(model.requests) == 1 and len(store.load("s")) == 2
    assert roles(chat.next_request()) == ["user", "assistant"]


# -- streaming and async ----------------------------------------------------------------------------


def test_stream_yields_text_deltas_then_the_reply(store: Store) -> None:
    chat = Chat(ScriptedModel(["Arr, the sea is wide and deep today."]), store=store,
                session_id="s", counter=TokenCounter())
    events = list(chat.stream("tell me about the sea"))
    *deltas, reply = events
    assert isinstance(reply, Reply)
    assert len(deltas) > 3 and all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == reply.text == "Arr, the sea is wide and deep today."
    assert [sm.message.text for sm in store.load("s")] == ["tell me about the sea", reply.text]


def test_stream_is_lazy_and_stores_the_reply_at_the_end(store: Store) -> None:
    chat = Chat(ScriptedModel(["one two three"]), store=store, session_id="s", counter=TokenCounter())
    it = chat.stream("go")
    assert store.find_conversation("s") is None, "nothing happens before iteration"
    first = next(it)
    assert first == "one "
    assert [sm.role for sm in store.load("s")] == ["user"], "the reply is stored once complete"
    rest = list(it)
    assert isinstance(rest[-1], Reply)
    assert [sm.role for sm in store.load("s")] == ["user", "assistant"]


def test_asend_and_astream_work_inside_asyncio_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "async.db")
    model = ScriptedModel(["first answer", "second answer streamed word by word"])
    chat = Chat(model, store=store, session_id="s", counter=TokenCounter())

    async def main() -> tuple[Reply, list[str | Reply]]:
        r = await chat.asend("one")
        events = [e async for e in chat.astream("two")]
        return r, events

    reply, events = asyncio.run(main())
    assert reply.text == "first answer" and reply.seq == 2
    *deltas, final = events
    assert isinstance(final, Reply) and final.seq == 4
    assert all(isinstance(d, str) for d in deltas) and len(deltas) == 6
    assert "".join(deltas) == final.text == "second answer streamed word by word"
    assert [sm.message.text for sm in store.load("s")] == [
        "one", "first answer", "two", "second answer streamed word by word"]
    store.close()


def test_astream_raises_the_model_error_in_the_caller(store: Store) -> None:
    chat = Chat(ScriptedModel([OverloadedError("busy", provider="test")]), store=store,
                session_id="s", counter=TokenCounter())

    async def main() -> list[str | Reply]:
        return [e async for e in chat.astream("hi")]

    with pytest.raises(OverloadedError, match="busy"):
        asyncio.run(main())
    assert [sm.message.text for sm in store.load("s")] == ["hi"]


def test_concurrent_async_turns_on_separate_sessions(store: Store) -> None:
    async def main() -> list[Reply]:
        chats = [Chat(EchoModel(latency=0.01), store=store, session_id=f"s{i}",
                      counter=TokenCounter()) for i in range(5)]
        return await asyncio.gather(*(c.asend(f"hello {i}") for i, c in enumerate(chats)))

    replies = asyncio.run(main())
    for i, r in enumerate(replies):
        assert r.conversation_id == f"s{i}"
        assert r.text.endswith(f"'hello {i}'")
        assert len(store.load(f"s{i}")) == 2


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
def test_a_failed_call_keeps_the_user_message_and_the_next_turn_is_valid(
    store: Store, streaming: bool
) -> None:
    model = ScriptedModel(["hello", RateLimitError("slow", provider="test", retry_after=2.0), "recovered"])
    chat = Chat(model, system=PERSONA, store=store, session_id="s", counter=TokenCounter())
    chat.send("first")

    def turn(text: str) -> Reply:
        if not streaming:
            return chat.send(text)
        *_, last = chat.stream(text)
        assert isinstance(last, Reply)
        return last

    with pytest.raises(RateLimitError) as info:
        turn("second")
    assert isinstance(info.value, ModelError) and info.value.retryable
    assert info.value.retry_after == 2.0
    log = store.load("s")
    assert [(sm.role, sm.message.text) for sm in log] == [
        ("user", "first"), ("assistant", "hello"), ("user", "second")], "the question is kept"

    reply = turn("third")
    assert reply.text == "recovered"
    request = model.last_request
    assert problems(request.messages) == []
    assert_sendable(request)
    assert roles(request) == ["user", "assistant", "user"]
    assert request.messages[-1].content == [TextBlock(text="second"), TextBlock(text="third")], \
        "the unanswered question and the new one are merged"
    assert request.system == [TextBlock(text=PERSONA)]
    assert any("merged consecutive user messages" in n for n in reply.notes)
    assert [sm.message.text for sm in store.load("s")] == [
        "first", "hello", "second", "third", "recovered"], "the stored log itself is not rewritten"


def test_a_failure_on_the_very_first_turn(store: Store) -> None:
    model = ScriptedModel([ModelConnectionError("network down"), "ok"])
    chat = Chat(model, store=store, session_id="s", counter=TokenCounter())
    with pytest.raises(ModelConnectionError):
        chat.send("are you there?")
    assert [sm.message.text for sm in store.load("s")] == ["are you there?"]
    assert chat.send("hello?").text == "ok"
    assert_sendable(model.last_request)
    assert model.last_request.messages == [Message(role="user", content=[
        TextBlock(text="are you there?"), TextBlock(text="hello?")])]


def test_any_exception_from_a_model_becomes_a_model_error(store: Store) -> None:
    model = ScriptedModel(["answer 1", RuntimeError("socket exploded"),
                           RuntimeError("socket exploded"), "answer 4"])
    chat = Chat(model, store=store, session_id="s", counter=TokenCounter())
    chat.send("q1")
    for q in ("q2", "q3"):
        with pytest.raises(ModelError) as info:
            chat.send(q)
        assert "RuntimeError" in str(info.value) and "socket exploded" in str(info.value)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert info.value.provider == "offline"
    reply = chat.send("q4")
    assert reply.text == "answer 4"
    req = model.last_request
    assert_sendable(req)
    assert [m.text for m in req.messages] == ["q1", "answer 1", "q2q3q4"]
    assert [sm.message.text for sm in store.load("s")] == ["q1", "answer 1", "q2", "q3", "q4", "answer 4"]


def test_a_model_that_runs_out_of_script_fails_loudly_as_a_model_error(store: Store) -> None:
    chat = Chat(ScriptedModel([]), store=store, counter=TokenCounter())
    with pytest.raises(ModelError, match="no more scripted replies"):
        chat.send("hi")


# -- sessions ---------------------------------------------------------------------------------------


def test_resuming_a_session_in_a_new_chat_sees_earlier_turns_and_keeps_the_persona(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    first = Chat("echo", system=PERSONA, store=SQLiteStore(path), session_id="trip",
                 user_id="alice", counter=TokenCounter())
    first.send("where are we sailing?")
    first.send("how long?")
    first.store.close()

    store = SQLiteStore(path)
    again = Chat(store=store, session_id="trip", counter=TokenCounter())  # no model, no persona
    assert again.system == PERSONA
    assert isinstance(again.model, EchoModel)
    assert again.user_id == "alice"
    assert [sm.message.text for sm in again.history() if sm.role == "user"] == [
        "where are we sailing?", "how long?"]
    reply = again.send("and then?")
    assert reply.seq == 6
    req = again.model.last_request  # type: ignore[attr-defined]
    assert req.system == [TextBlock(text=PERSONA)]
    assert [m.text for m in req.messages if m.role == "user"] == [
        "where are we sailing?", "how long?", "and then?"]
    assert_sendable(req)
    store.close()


def test_resuming_with_a_new_persona_updates_the_session(store: Store) -> None:
    Chat(EchoModel(), system="old persona", store=store, session_id="s", counter=TokenCounter()).send("a")
    model = EchoModel()
    chat = Chat(model, system="new persona", store=store, session_id="s", counter=TokenCounter())
    chat.send("b")
    assert model.last_request.system == [TextBlock(text="new persona")]
    assert store.get_conversation("s").persona == "new persona"
    assert Chat(EchoModel(), store=store, session_id="s").system == "new persona"


def test_a_session_belongs_to_its_user(store: Store) -> None:
    Chat(EchoModel(), store=store, session_id="s", user_id="alice", counter=TokenCounter()).send("mine")
    with pytest.raises(ColloquyError, match="another user"):
        Chat(EchoModel(), store=store, session_id="s", user_id="bob")
    assert Chat(EchoModel(), store=store, session_id="s", user_id="alice").user_id == "alice"
    assert store.list_conversations(user_id="alice")[0].id == "s"


def test_two_chats_on_one_session_see_each_others_turns(store: Store) -> None:
    a_model, b_model = EchoModel(), EchoModel()
    a = Chat(a_model, store=store, session_id="shared", counter=TokenCounter())
    b = Chat(b_model, store=store, session_id="shared", counter=TokenCounter())
    a.send("from a")
    b.send("from b")
    a.send("a again")
    assert [m.text for m in a_model.last_request.messages if m.role == "user"] == [
        "from a", "from b", "a again"]
    assert [sm.seq for sm in a.history()] == [1, 2, 3, 4, 5, 6]
    assert [sm.seq for sm in store.load("shared")] == [1, 2, 3, 4, 5, 6]


def test_the_policy_decides_what_the_model_sees(store: Store) -> None:
    model = EchoModel()
    chat = Chat(model, store=store, policy=RollingWindow(turns=2), counter=TokenCounter())
    for i in range(5):
        chat.send(f"q{i}")
    req = model.last_request
    assert [m.text for m in req.messages if m.role == "user"] == ["q3", "q4"]
    assert len(chat.history()) == 10, "trimming never deletes stored turns"
    ctx = chat.build_context()
    assert ctx.sources == [[7], [8], [9], [10]]

    full = EchoModel()
    chat2 = Chat(full, store=store, session_id=chat.session_id, policy=FullHistory(),
                 counter=TokenCounter())
    chat2.send("q5")
    assert len(full.last_request.messages) == 11


# -- accounting -------------------------------------------------------------------------------------


def test_chat_cost_sums_the_usage_of_every_turn(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "claude-haiku-4-5-20251001"
    usages = [Usage(input_tokens=100, output_tokens=20),
              Usage(input_tokens=50, output_tokens=10, cache_write_tokens=500),
              Usage(input_tokens=60, output_tokens=30, cache_read_tokens=500)]
    model = ScriptedModel([ModelResponse(content=[TextBlock(text=f"a{i}")], usage=u, model=name)
                           for i, u in enumerate(usages)], name=name)
    model.provider = "anthropic"  # stands in for Claude: priced as Claude (offline: $0)
    chat = Chat(model, store=store, counter=TokenCounter(), title_model=False)
    replies = [chat.send(f"q{i}") for i in range(3)]
    price = Price.anthropic(1.0, 5.0)
    cost = chat.cost()
    assert [t.seq for t in cost.turns] == [2, 4, 6]
    assert [t.usage for t in cost.turns] == usages
    assert [t.model for t in cost.turns] == [name] * 3
    assert [t.cost_usd for t in cost.turns] == pytest.approx([price.cost(u) for u in usages])
    assert cost.usage == Usage(input_tokens=210, output_tokens=60, cache_write_tokens=500,
                               cache_read_tokens=500)
    assert cost.cost_usd == pytest.approx(sum(price.cost(u) for u in usages))
    assert cost.cost_usd == pytest.approx(sum(r.cost_usd for r in replies if r.cost_usd))


def test_chat_cost_is_unknown_when_a_price_is_unknown(store: Store) -> None:
    model = ScriptedModel([ModelResponse(content=[TextBlock(text="x")],
                                         usage=Usage(input_tokens=5, output_tokens=5))],
                          name="mystery-model-1")
    model.provider = "acme"  # stands in for a paid provider colloquy has no price for
    chat = Chat(model, store=store, counter=TokenCounter())
    reply = chat.send("q")
    assert reply.cost_usd is None
    cost = chat.cost()
    assert cost.cost_usd is None and cost.turns[0].cost_usd is None
    assert cost.usage == Usage(input_tokens=5, output_tokens=5)


def test_offline_models_cost_nothing(store: Store) -> None:
    chat = Chat(EchoModel(), store=store, counter=TokenCounter())
    chat.send("hi")
    assert chat.cost().cost_usd == 0.0
    assert chat.cost().usage.input_tokens > 0


def test_each_response_calibrates_the_chats_token_counter(store: Store) -> None:
    counter = TokenCounter()
    billed = Usage(input_tokens=100, cache_read_tokens=2000, output_tokens=5)
    model = ScriptedModel([ModelResponse(content=[TextBlock(text="ok")], usage=billed)], name="calib")
    chat = Chat(model, system="short", store=store, counter=counter)
    chat.send("a question of a few words")
    raw = counter.raw(model.last_request.system, model.last_request.messages)
    assert raw < billed.prompt_tokens
    assert counter.factor("calib") == pytest.approx(min(3.0, billed.prompt_tokens / raw))


# -- the offline models -----------------------------------------------------------------------------


def test_get_model_echo_and_unknown_names() -> None:
    assert isinstance(get_model("echo"), EchoModel)
    assert get_model("echo").name == "echo"
    assert isinstance(get_model(environ={"COLLOQUY_MODEL": "echo"}), EchoModel)
    for bad in ("no-such-model", "gemini-pro", "ollama:", "mystery:thing"):
        with pytest.raises(ConfigError):
            get_model(bad, environ={})
    with pytest.raises(ConfigError):
        Chat("no-such-model", store=MemoryStore())


def test_echo_model_reports_what_it_received() -> None:
    model = EchoModel()
    req = ModelRequest(model="echo", system=[TextBlock(text="sys")], messages=[
        Message.user("first"), Message.assistant("reply"),
        Message(role="user", content=[TextBlock(text="the last question")])])
    resp = model.request(req)
    from colloquy.tokens import counter as shared

    tokens = shared.raw(req.system, req.messages)
    assert resp.text == f"echo: received 3 messages (~{tokens} tokens); last user text: 'the last question'"
    assert resp.stop_reason == "end_turn" and resp.model == "echo"
    assert resp.usage.input_tokens == tokens and resp.usage.output_tokens > 0
    assert model.requests == [req] and model.last_request is req
    one = model.request(ModelRequest(model="echo", messages=[Message.user("x")]))
    assert one.text.startswith("echo: received 1 message (")


def test_echo_model_is_deterministic() -> None:
    req = ModelRequest(model="echo", messages=[Message.user("same question")])
    a, b = EchoModel(), EchoModel()
    assert a.request(req).text == b.request(req).text == a.request(req).text
    assert a.request(req).usage == b.request(req).usage
    assert a.request(req).id != a.request(req).id, "only the response id differs"


def test_echo_model_reports_the_users_words_not_the_blocks_a_policy_added() -> None:
    # The default policy puts recalled excerpts before the user's text in the newest message:
    # echoed back, they were stored and recalled again, growing every turn.
    req = ModelRequest(model="echo", messages=[Message(role="user", content=[
        TextBlock(text="<earlier_excerpts>\nuser: an old turn\n</earlier_excerpts>"),
        TextBlock(text="the new question")])])
    assert EchoModel().request(req).text.endswith("last user text: 'the new question'")


def test_echo_model_skips_tool_result_messages_for_the_last_user_text() -> None:
    from colloquy.messages import ToolResultBlock

    req = ModelRequest(model="echo", messages=[
        Message.user("real question"),
        Message(role="assistant", content=[ToolUseBlock(id="t", name="f")]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="t", content="r")]),
    ])
    assert EchoModel().request(req).text.endswith("last user text: 'real question'")


def test_offline_models_stream_word_by_word() -> None:
    model = ScriptedModel(["one two  three"])
    events = list(model.stream(ModelRequest(model="x", messages=[Message.user("q")])))
    assert [e.text for e in events[:-1] if isinstance(e, TextDelta)] == ["one ", "two  ", "three"]
    assert isinstance(events[-1], ModelResponse) and events[-1].text == "one two  three"


def test_scripted_model_steps() -> None:
    call = tool_call("add", {"a": 1})
    model = ScriptedModel(["text", call, [TextBlock(text="both"), call]])
    req = ModelRequest(model="scripted", messages=[Message.user("q")])
    assert model.remaining == 3
    assert model.request(req).text == "text"
    r = model.request(req)
    assert r.tool_uses == [call] and r.stop_reason == "tool_use"
    r = model.request(req)
    assert r.text == "both" and r.tool_uses == [call]
    with pytest.raises(LookupError):
        model.request(req)
    model.add("more")
    assert model.request(req).text == "more"
    assert len(model.requests) == 5
    assert tool_call("f").id != tool_call("f").id
    assert tool_call("f", id="fixed").id == "fixed"
    with pytest.raises(LookupError):
        _ = EchoModel().last_request


def test_side_calls_summaries_facts_and_titles_are_billed_to_the_session(store: Store) -> None:
    """A session's cost counts the cheaper model's calls too, and keeps them across processes."""
    from colloquy import (ComposedPolicy, FactExtraction, FactExtractor, FactsPart, RecentTurns,
                          Summariser, SummaryPart)
    from colloquy.usage import price_for

    haiku, sonnet = "claude-haiku-4-5", "claude-sonnet-4-6"
    side = Usage(input_tokens=100, output_tokens=20)

    def scripted(name: str, blocks: list[list[Any]], usage: Usage) -> ScriptedModel:
        double = ScriptedModel([ModelResponse(content=b, usage=usage, model=name) for b in blocks],
                               name=name)
        double.provider = "anthropic"  # stands in for Claude: priced as Claude (offline: $0)
        return double

    summariser = scripted(haiku, [[TextBlock(text=f"- point {i}")] for i in range(20)], side)
    extractor = scripted(haiku, [[tool_call("record_memory", {"operations": []})]] * 20, side)
    titler = scripted(haiku, [[TextBlock(text="Leek dinners")]], side)
    chat_model = scripted(sonnet, [[TextBlock(text=f"a{i}")] for i in range(8)],
                          Usage(input_tokens=50, output_tokens=10))
    policy = ComposedPolicy(
        400, parts=[FactsPart(), SummaryPart(Summariser(summariser), min_new_turns=2)],
        recent=RecentTurns(turns=2), min_recent_turns=1)
    chat = Chat(chat_model, store=store, session_id="s", user_id="ana", policy=policy,
                counter=TokenCounter(), title_model=titler,
                extract_facts=FactExtraction(FactExtractor(extractor)))
    for i in range(8):
        chat.send(f"message {i} about leeks " + "detail " * 30)

    cost = chat.cost()
    calls = {s.purpose: s for s in cost.side_calls}
    assert set(calls) == {"summary", "facts", "title"}
    assert calls["title"].calls == 1 and calls["facts"].calls == 8
    assert calls["summary"].calls == len(summariser.requests) >= 2
    price = price_for(haiku)
    assert price is not None
    for s in calls.values():
        assert s.model == haiku
        assert s.usage == Usage(input_tokens=100 * s.calls, output_tokens=20 * s.calls)
        assert s.cost_usd == pytest.approx(s.calls * price.cost(side))
    turns = sum(t.cost_usd or 0.0 for t in cost.turns)
    assert cost.cost_usd == pytest.approx(turns + sum(s.cost_usd or 0.0 for s in calls.values()))
    assert cost.usage.input_tokens == 8 * 50 + 100 * sum(s.calls for s in calls.values())
    # Kept with the conversation: another process (a new Chat on the store) sees the same bill.
    assert Chat(EchoModel(), store=store, session_id="s").cost() == cost


def test_a_turns_own_sampling_options_override_the_chats_for_that_turn_only(store: Store) -> None:
    model = EchoModel()
    chat = Chat(model, store=store, temperature=0.7, max_tokens=300)
    chat.send("one", temperature=0.1, max_tokens=50)
    assert (model.last_request.temperature, model.last_request.max_tokens) == (0.1, 50)
    chat.send("two")
    assert (model.last_request.temperature, model.last_request.max_tokens) == (0.7, 300)
    list(chat.stream("three", max_tokens=20))
    assert (model.last_request.temperature, model.last_request.max_tokens) == (0.7, 20)
    asyncio.run(chat.asend("four", temperature=0.0))
    assert model.last_request.temperature == 0.0
    assert chat.next_request("five").max_tokens == 300  # nothing left behind
