"""The default policy remembers: a chat built without a policy keeps older turns reachable under a
budget fitted to its model, with no extra model call and a cache-friendly prefix."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from colloquy import Chat, MemoryStore
from colloquy.context import RollingWindow, problems
from colloquy.context.default import DEFAULT_BUDGET_CAP, DefaultPolicy, default_budget
from colloquy.models import EchoModel, ModelRequest, ScriptedModel
from colloquy.models.limits import DEFAULT_CONTEXT_WINDOW
from colloquy.store import Store
from colloquy.tokens import TokenCounter

FILLER = [
    "How was your weekend? Mine was quiet, I read a novel about sailors and storms.",
    "Any plans for the evening? Probably cooking pasta and watching an old film.",
    "Did you see the match yesterday? It went to extra time and it was very tense.",
    "The weather is grey again, but the garden really needs the rain this week.",
]
KITTEN = "I adopted a tabby kitten and named her Biscuit."


def chat_through(chat: Chat, n_filler: int) -> None:
    chat.send(KITTEN)
    for i in range(n_filler):
        chat.send(f"{FILLER[i % len(FILLER)]} ({i})")


def test_the_default_budget_is_fitted_to_the_model() -> None:
    # Half the context window, capped for cost, room left for the reply.
    assert default_budget("claude-sonnet-4-6") == DEFAULT_BUDGET_CAP == 8000
    assert default_budget("gpt-4o") == 8000
    assert default_budget("ollama:llama3") == DEFAULT_CONTEXT_WINDOW // 2 == 4096
    assert default_budget("ollama:llama3", max_tokens=6000) == DEFAULT_CONTEXT_WINDOW - 6000
    assert default_budget("claude-sonnet-4-6", cap=100_000) == 100_000


def test_a_chat_without_a_policy_gets_the_default() -> None:
    chat = Chat(EchoModel(), store=MemoryStore())
    assert isinstance(chat.policy, DefaultPolicy)
    assert chat.policy.retriever == "auto"  # hybrid once warm when the extra is installed
    assert Chat(EchoModel(), store=MemoryStore()).policy is not chat.policy  # one per chat


def test_no_embedding_model_loads_before_recall_nor_with_bm25() -> None:
    # Loading torch and the sentence model took 38 s on a busy machine: a chat whose log fits
    # the budget (no recall yet) never starts it, and neither does retriever="bm25" once recall
    # runs (a fresh interpreter, so no other test has imported torch). The default's background
    # loading is tested in test_default_embeddings.py.
    script = f"""
import json, sys
from colloquy import Chat, MemoryStore
from colloquy.context.default import DefaultPolicy
from colloquy.models import EchoModel
short = Chat(EchoModel(), store=MemoryStore(), title_model=False)
for i in range(5):
    short.send({FILLER!r}[i % 4])
before = sorted(m for m in ("torch", "sentence_transformers") if m in sys.modules)
model = EchoModel()
chat = Chat(model, store=MemoryStore(), policy=DefaultPolicy(retriever="bm25"), title_model=False)
chat.send({KITTEN!r})
for i in range(60):
    chat.send({FILLER!r}[i % 4] * 12 + f" ({{i}})")
chat.send("What did I name the kitten?")
print(json.dumps({{"recalled": "<earlier_excerpts>" in json.dumps(model.last_request.to_anthropic()),
                  "loaded": before + sorted(m for m in ("torch", "sentence_transformers") if m in sys.modules)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"recalled": True, "loaded": []}


def test_older_turns_stay_reachable_with_one_model_call_per_turn(store: Store, counter: TokenCounter) -> None:
    model = EchoModel()
    chat = Chat(model, store=store, session_id="d", counter=counter,
                policy=DefaultPolicy(600, retriever="bm25"))
    chat_through(chat, 40)
    assert len(model.requests) == 41  # no side call: no summary, no extraction
    # A rolling window of the same chat has forgotten it (the old default).
    window = Chat(EchoModel(), store=store, session_id="d", counter=counter,
                  policy=RollingWindow(turns=20))
    forgot = window.next_request("What is the name of my kitten?")
    assert all(KITTEN not in b.text for m in forgot.messages for b in m.content if m.role == "user")
    chat.send("What is the name of my kitten?")
    request = model.last_request
    newest = request.messages[-1]
    text = "\n".join(b.text for b in newest.content)  # excerpts lead the newest message
    assert f"user: {KITTEN}" in text and "<earlier_excerpts>" in text
    assert newest.content[-1].text == "What is the name of my kitten?"
    assert counter.count("echo", request.system, request.messages) <= 600
    assert problems(request.messages) == []


def test_the_whole_log_while_it_fits(store: Store, counter: TokenCounter) -> None:
    model = EchoModel()
    chat = Chat(model, system="Be brief.", store=store, session_id="short", counter=counter)
    chat_through(chat, 5)
    request = model.last_request
    assert len(request.messages) == 11 and request.messages[0].text == KITTEN
    assert [b.text for b in request.system] == ["Be brief."]
    assert all(len(m.content) == 1 for m in request.messages)  # no excerpts: nothing to recall


def units(request: ModelRequest) -> tuple[list[str], int]:
    body = request.to_anthropic()
    blocks: list[dict[str, Any]] = list(body.get("system") or [])
    for m in body["messages"]:
        blocks += m["content"]
    last = max((i for i, b in enumerate(blocks) if b.get("cache_control")), default=-1)
    return [json.dumps({k: v for k, v in b.items() if k != "cache_control"}, sort_keys=True)
            for b in blocks], last


def test_claude_requests_reuse_the_cached_prefix_between_trims(store: Store) -> None:
    persona = "You are a patient travel assistant who answers in detail. " * 120  # ~1,500 tokens
    turns = 300  # ~40 tokens each: past the 8,000-token budget after about 160
    model = ScriptedModel([f"Answer {i}: the plan holds, see you then." for i in range(turns)],
                          name="claude-sonnet-4-6")
    chat = Chat(model, system=persona, store=store, session_id="c", title_model=False,
                policy=DefaultPolicy(retriever="bm25"))
    chat_through(chat, turns - 1)
    requests = model.requests
    recalling = [i for i, r in enumerate(requests) if "<earlier_excerpts>" in json.dumps(r.to_anthropic())]
    assert recalling and recalling[0] < turns - 100  # the log outgrew the fitted budget
    assert all(r.system[0].cache_control is not None for r in requests)  # the persona is cached
    reused = []
    for a, b in zip(requests, requests[1:]):
        sa, bp = units(a)
        sb, _ = units(b)
        reused.append(bp >= 0 and sa[:bp + 1] == sb[:bp + 1])
    # The window moves in steps: between them, each request starts with all the previous one
    # cached (the excerpts, new every turn, sit after the cached prefix): a miss per step.
    assert sum(reused) >= 0.9 * len(reused)
    assert sum(reused[recalling[0]:]) >= 0.9 * len(reused[recalling[0]:])


def test_the_budget_holds_at_every_turn_and_for_long_messages(store: Store, counter: TokenCounter) -> None:
    model = EchoModel()
    chat = Chat(model, store=store, session_id="b", counter=counter,
                policy=DefaultPolicy(500, retriever="bm25"))
    for i in range(30):
        chat.send(f"{FILLER[i % 4]} " * (1 + i % 5))
        request = model.last_request
        assert counter.count("echo", request.system, request.messages) <= 500


@pytest.mark.parametrize("bad", [{"max_input_tokens": 0}, {"recent_share": 1.0}])
def test_bad_settings_are_config_errors(bad: dict[str, Any]) -> None:
    from colloquy.errors import ConfigError

    with pytest.raises(ConfigError):
        DefaultPolicy(**bad)
