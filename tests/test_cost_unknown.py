"""A cost that is unknown is never shown as $0: a model call that reported no usage (every count
0, nothing estimated) has an unknown cost, and any sum that contains it (a turn's rounds, a
session, a side-call entry) is unknown too (colloquy.usage.add_costs), on every surface: the
library's Reply and Chat.cost, the turn routes, GET conversation, the CLI's turn line and /cost.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from colloquy import Chat, FunctionModel, ModelResponse, SQLiteStore, TextBlock, Usage, tool_call
from colloquy.costs import with_side_call
from colloquy.messages import Message
from colloquy.server import create_app
from colloquy.store import NewMessage
from colloquy.store.users import issue_token
from colloquy.usage import add_costs, cost_of
from server_helpers import bearer, clean_env

REPORTED = Usage(input_tokens=50, output_tokens=10)


def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def two_rounds() -> FunctionModel:
    """A turn of two model calls: a tool call whose usage is reported, then a reply whose
    usage is not (a provider that sent none for that call)."""
    def answer(request: Any) -> ModelResponse:
        if request.messages[-1].role == "user" and any(
                b.type == "tool_result" for b in request.messages[-1].content):
            return ModelResponse(content=[TextBlock(text="sunny")], usage=Usage(),
                                 model="local-llm", stop_reason="end_turn")
        return ModelResponse(content=[tool_call("lookup", {"city": "Lisbon"})], usage=REPORTED,
                             model="local-llm", stop_reason="tool_use")
    return FunctionModel(answer)


def test_a_call_without_usage_has_an_unknown_cost_and_so_has_every_sum_of_it() -> None:
    assert cost_of("function", Usage()) is None and cost_of("claude-sonnet-4-6", Usage()) is None
    assert cost_of("function", REPORTED) == 0.0
    assert cost_of("function", Usage(input_tokens=3, estimated=True)) == 0.0
    assert add_costs([0.5, None, 0.25]) is None and add_costs([0.5, 0.25]) == 0.75
    assert add_costs([]) == 0.0
    assert Usage().describe() == "usage not reported"
    # A side call's entry: unknown once any of its calls is.
    meta = with_side_call({}, "title", "function", REPORTED, 0.0)
    meta = with_side_call(meta, "title", "function", Usage(), 0.0)
    assert meta["side_calls"]["title function"]["cost_usd"] is None


def test_a_turn_with_one_unreported_call_costs_unknown_in_the_library_and_the_routes(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    chat = Chat(two_rounds(), store=store, session_id="c_lib", user_id="ada", tools=[lookup])
    reply = chat.send("weather in Lisbon?")
    assert reply.rounds == 2 and reply.usage.input_tokens == 50
    assert reply.cost_usd is None  # was 0.0: the unreported call counted as $0
    cost = chat.cost()
    assert [t.cost_usd for t in cost.turns] == [0.0, None]
    assert cost.cost_usd is None
    token = issue_token(store, "ada")
    # The service runs no tools: its turn is one call, which reports no usage.
    silent = FunctionModel(lambda request: ModelResponse(
        content=[TextBlock(text="hi")], usage=Usage(), model="function", stop_reason="end_turn"))
    app = create_app(store=store, model=silent, environ={}, rate_limit=None)
    with TestClient(app) as client:
        detail = client.get("/v1/conversations/c_lib", headers=bearer(token)).json()
        replies = [m for m in detail["messages"] if m["role"] == "assistant"]
        assert [m["cost_usd"] for m in replies] == [0.0, None]
        r = client.post("/v1/conversations/c_lib/messages", headers=bearer(token),
                        json={"content": "and in Porto?"})
        assert r.status_code == 200, r.text
        assert r.json()["cost_usd"] is None  # was 0.0
        # What the model saw for that reply: no dollar figure in its cost split either.
        seen = client.get(f"/v1/conversations/c_lib/messages/{r.json()['seq']}/context",
                          headers=bearer(token)).json()
        assert {k: v for k, v in seen["cost"].items() if k.endswith("_usd")} == {
            "input_usd": None, "cache_write_usd": None, "cache_read_usd": None,
            "output_usd": None, "total_usd": None}, seen["cost"]
        streamed = client.post("/v1/conversations/c_lib/messages", headers=bearer(token),
                               json={"content": "and in Faro?", "stream": True}).text
        done = streamed.split("event: done", 1)[1]
        assert '"cost_usd": null' in done or '"cost_usd":null' in done, done
    store.close()


def test_a_row_stored_with_zero_dollars_for_no_usage_reads_as_unknown(tmp_path: Path) -> None:
    """Rows stored before the rule carry $0 for a call that reported no usage: read back (GET,
    Chat.cost, the CLI's /cost) its cost is unknown."""
    db = tmp_path / "old.db"
    store = SQLiteStore(db)
    store.create_conversation(id="c_old", user_id="ada")
    store.append("c_old", [
        NewMessage(message=Message(role="user", content=[TextBlock(text="hi")])),
        NewMessage(message=Message(role="assistant", content=[TextBlock(text="hello")]),
                   usage=Usage(), model="function", cost_usd=0.0),
    ])
    assert Chat(two_rounds(), store=store, session_id="c_old").cost().cost_usd is None
    token = issue_token(store, "ada")
    app = create_app(store=store, model=two_rounds(), environ={}, rate_limit=None)
    with TestClient(app) as client:
        detail = client.get("/v1/conversations/c_old", headers=bearer(token)).json()
        assert detail["messages"][1]["cost_usd"] is None
    store.close()
    out = subprocess.run(
        [sys.executable, "-m", "colloquy", "chat", "--model", "echo", "--session", "c_old",
         "--db", str(db)], input="/cost\n/quit\n", capture_output=True, text=True,
        env=clean_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    (call,) = [ln for ln in lines if ln.startswith("[2]")]
    assert "usage not reported" in call and "price unknown" in call and "$" not in call, call
    (session,) = [ln for ln in lines if ln.startswith("session:")]
    assert "price unknown" in session and "$" not in session, session
