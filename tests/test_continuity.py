"""Continuity: automatic, editable titles; conversations listed newest first per user."""

from __future__ import annotations

import time
from typing import Any

from colloquy import Chat, EchoModel, FunctionModel, ScriptedModel
from colloquy.continuity import TITLE_MODEL_ANTHROPIC, TITLE_PROMPT, first_words, title_model_for
from colloquy.models import get_model
from colloquy.store import Store


def test_a_new_conversation_is_titled_from_its_first_words_by_default(store: Store) -> None:
    chat = Chat(ScriptedModel(["sure", "ok"]), store=store, session_id="c_t", user_id="u")
    chat.send("Help me plan a week of vegetarian dinners for two people on a budget please")
    conv = store.get_conversation("c_t")
    assert conv.title is not None and len(conv.title) <= 60
    assert conv.title.startswith("Help me plan a week of vegetarian dinners for two")
    assert conv.title.endswith("…")
    chat.send("thanks")  # the scripted model got no extra (title) request: 2 replies were enough
    assert store.get_conversation("c_t").title == conv.title


def test_a_title_model_names_the_conversation_and_a_rename_is_never_overwritten(store: Store) -> None:
    seen: list[Any] = []

    def titler(req: Any) -> str:
        seen.append(req)
        return '"Dinner Planning."\nextra line'

    chat = Chat(EchoModel(), store=store, session_id="c_m", title_model=FunctionModel(titler))
    chat.send("what should we cook tonight?")
    assert store.get_conversation("c_m").title == "Dinner Planning"
    (req,) = seen
    assert req.system[0].text == TITLE_PROMPT and req.max_tokens <= 32
    body = req.messages[0].text
    assert "<conversation>" in body and "what should we cook tonight?" in body

    store.update_conversation("c_m", title="Tuesday dinner")  # renamed on another device
    chat.send("and dessert?")
    assert store.get_conversation("c_m").title == "Tuesday dinner" and len(seen) == 1


def test_a_failing_title_model_never_fails_the_turn(store: Store) -> None:
    def broken(req: Any) -> str:
        raise RuntimeError("title service down")

    chat = Chat(EchoModel(), store=store, session_id="c_f", title_model=FunctionModel(broken))
    reply = chat.send("tell me about  the   Douro valley")
    assert reply.text.startswith("echo:")
    assert store.get_conversation("c_f").title == "tell me about the Douro valley"


def test_the_default_title_model_is_cheap_and_offline_models_make_no_call() -> None:
    claude = get_model("claude-sonnet-4-6", api_key="sk-test")
    model, name = title_model_for(claude, None)  # type: ignore[misc]
    assert model is claude and name == TITLE_MODEL_ANTHROPIC == "claude-haiku-4-5"
    local = get_model("ollama:llama3", environ={})
    assert title_model_for(local, None) == (local, "llama3")
    assert title_model_for(EchoModel(), None) is None
    assert title_model_for(claude, False) is None


def test_first_words() -> None:
    assert first_words("  short   one ") == "short one"
    long = "word " * 40
    assert first_words(long).endswith("…") and len(first_words(long)) <= 60


def test_a_users_conversations_are_listed_newest_activity_first(store: Store) -> None:
    for sid in ("c_1", "c_2", "c_3"):
        Chat(EchoModel(), store=store, session_id=sid, user_id="ann").send(f"about {sid}")
        time.sleep(0.01)
    Chat(EchoModel(), store=store, session_id="c_x", user_id="other").send("not ann's")
    Chat(EchoModel(), store=store, session_id="c_1").send("back to the first")  # resumed
    convs = store.list_conversations(user_id="ann")
    assert [c.id for c in convs] == ["c_1", "c_3", "c_2"]
    assert [c.title for c in convs] == ["about c_1", "about c_3", "about c_2"]
    assert convs[0].updated_at >= convs[1].updated_at >= convs[2].updated_at


def test_a_local_models_title_call_is_free_not_price_unknown(store: Store) -> None:
    """A title through a local server is priced by the model that made it (free), not by its
    bare name (which no price table knows): the session's bill stays known, $0."""
    from fake_openai import FakeOpenAI, Turn

    with FakeOpenAI() as server:
        server.push(Turn(text="Try a risotto."), Turn(text="Dinner Plans"))
        model = get_model("ollama:llama3", base_url=server.base_url, environ={})
        chat = Chat(model, store=store, session_id="c_local", user_id="u")
        chat.send("what should we cook tonight?")
        assert store.get_conversation("c_local").title == "Dinner Plans"
        cost = chat.cost()
        (side,) = cost.side_calls
        assert side.purpose == "title" and side.model == "llama3"
        assert side.cost_usd == 0.0 and cost.cost_usd == 0.0
