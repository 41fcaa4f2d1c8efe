"""Conversation names are per user on every route: the same name for two users is two
conversations, another user's name answers exactly as a free one (no probing, no squatting),
and the CLI, export/import and the listings show the names the service shows. The library's
``Chat(session_id=...)`` keeps addressing conversations by id."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from colloquy import Chat, EchoModel, SQLiteStore, Store
from colloquy.errors import StoreError
from colloquy.rights import delete_user, export_user, import_user
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import add_user, bearer, clean_env, serve_in_thread, serve_subprocess
from test_server_multiprocess import db  # noqa: F401 - the two-back-end fixture


def test_a_name_is_unique_per_user_not_across_users(store: Store) -> None:
    a = store.create_conversation(id="c_a", user_id="ann", name="support")
    b = store.create_conversation(id="c_b", user_id="bob", name="support")
    assert store.find_named("ann", "support") == a and store.find_named("bob", "support") == b
    assert store.find_named("cat", "support") is None
    with pytest.raises(StoreError, match="'ann' already has a conversation named 'support'"):
        store.create_conversation(id="c_c", user_id="ann", name="support")
    # Chat(session_id=...) is the library's id, and names the conversation after it.
    chat = Chat(EchoModel(), store=store, session_id="trip", user_id="ann")
    chat.send("hi")
    assert store.get_conversation("trip").name == "trip" == store.find_named("ann", "trip").id  # type: ignore[union-attr]
    # Conversations without a user never collide by name.
    store.create_conversation(id="x1", name="same")
    store.create_conversation(id="x2", name="same")


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, SQLiteStore, str, str]:
    store = SQLiteStore(tmp_path / "n.db")
    ann, bob = issue_token(store, "ann"), issue_token(store, "bob")
    return (TestClient(create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)),
            store, ann, bob)


def oa(client: TestClient, token: str, name: str, text: str, stream: bool = False) -> httpx.Response:
    return client.post("/v1/chat/completions", headers={**bearer(token),
                       "X-Colloquy-Conversation": name},
                       json={"messages": [{"role": "user", "content": text}], "stream": stream})


def history(client: TestClient, token: str, name: str) -> list[str]:
    r = client.get(f"/v1/conversations/{name}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return [m["text"] for m in r.json()["messages"] if m["role"] == "user"]


def test_no_probing_and_no_squatting_on_every_route(
        client: tuple[TestClient, SQLiteStore, str, str]) -> None:
    c, store, ann, bob = client
    assert oa(c, bob, "default", "bob's secret").status_code == 200  # bob took it first
    # For ann, bob's name and a free name answer alike, on each route.
    for name in ("default", "never-used"):
        for method, url in (("GET", f"/v1/conversations/{name}"),
                            ("GET", f"/v1/conversations/{name}/context?message=x"),
                            ("PATCH", f"/v1/conversations/{name}"),
                            ("DELETE", f"/v1/conversations/{name}"),
                            ("POST", f"/v1/conversations/{name}/messages")):
            body = {"title": "t"} if method == "PATCH" else {"content": "x"} \
                if method == "POST" else None
            r = c.request(method, url, headers=bearer(ann), json=body)
            assert (r.status_code, r.json()) == (404, {"error": {
                "type": "not_found", "message": f"no conversation with id {name!r}"}})
    # ann's own "default" through the OpenAI route, streamed and not: hers alone.
    assert oa(c, ann, "default", "ann one").status_code == 200
    r = oa(c, ann, "default", "ann two", stream=True)
    assert r.status_code == 200 and r.headers["x-colloquy-conversation"] == "default"
    assert history(c, ann, "default") == ["ann one", "ann two"]
    assert history(c, bob, "default") == ["bob's secret"]
    reply = oa(c, bob, "default", "bob again").json()
    assert reply["colloquy"]["conversation_id"] == "default" and reply["id"].startswith(
        "chatcmpl-default-")
    assert history(c, bob, "default") == ["bob's secret", "bob again"]
    # Each one's list shows the name; the ids underneath differ and are neither the name.
    for token, who in ((ann, "ann"), (bob, "bob")):
        listed = c.get("/v1/conversations", headers=bearer(token)).json()["conversations"]
        assert [x["id"] for x in listed] == ["default"]
    a, b = store.find_named("ann", "default"), store.find_named("bob", "default")
    assert a is not None and b is not None and len({a.id, b.id, "default"}) == 3
    # Deleted and named again: a new conversation (a new id), not the old log.
    assert c.delete("/v1/conversations/default", headers=bearer(ann)).status_code == 204
    assert oa(c, ann, "default", "fresh").status_code == 200
    assert history(c, ann, "default") == ["fresh"] and store.find_named("ann", "default").id != a.id  # type: ignore[union-attr]


def test_two_servers_give_two_users_one_name_each(db: str, tmp_path: Path) -> None:  # noqa: F811
    ann, bob = add_user(db, "ann"), add_user(db, "bob")
    with serve_subprocess(db, log=tmp_path / "a.log") as a, \
            serve_subprocess(db, log=tmp_path / "b.log") as b:
        def say(i: int) -> int:
            token, url = ((ann, a), (bob, b), (ann, b), (bob, a))[i % 4]
            client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
            client.chat.completions.create(model="echo", user="support-7",
                                           messages=[{"role": "user", "content": f"m{i}"}])
            return i

        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(say, range(16)))
        for token, mine in ((ann, {0, 2, 4, 6, 8, 10, 12, 14}), (bob, {1, 3, 5, 7, 9, 11, 13, 15})):
            r = httpx.get(f"{a}/v1/conversations/support-7", headers=bearer(token), timeout=30)
            texts = {m["text"] for m in r.json()["messages"] if m["role"] == "user"}
            assert texts == {f"m{i}" for i in mine}


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "colloquy", *args], input=stdin,
                       capture_output=True, text=True, env=clean_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_the_cli_resolves_names_like_the_service(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    store = SQLiteStore(db)
    bob = issue_token(store, "bob")
    app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)
    with serve_in_thread(app) as url:
        openai.OpenAI(base_url=url + "/v1", api_key=bob, max_retries=0).chat.completions.create(
            model="echo", user="plans", messages=[{"role": "user", "content": "bob's plans"}])
    bobs = store.find_named("bob", "plans")
    assert bobs is not None
    # ann names bob's conversation by its name and by its id: each is a conversation of hers.
    for ref in ("plans", bobs.id):
        cli("chat", "--model", "echo", "--db", db, "--user", "ann", "--session", ref,
            stdin="ann's line\n")
        mine = store.find_named("ann", ref)
        assert mine is not None and mine.id != bobs.id
        assert [m.message.text for m in store.load(mine.id) if m.role == "user"] == ["ann's line"]
    assert [m.message.text for m in store.load(bobs.id) if m.role == "user"] == ["bob's plans"]
    # bob resumes his own by the name the service shows, and sessions list shows it.
    again = cli("chat", "--model", "echo", "--db", db, "--user", "bob", "--session", "plans",
                stdin="more\n")
    assert "resuming session plans (2 messages" in again.stderr
    listed = cli("sessions", "list", "--user", "bob", "--db", db).stdout
    assert listed.startswith(f"plans (id {bobs.id})\t")
    assert json.loads(cli("sessions", "list", "--user", "bob", "--json", "--db", db).stdout
                      )[0]["name"] == "plans"
    # Export and import keep the names.
    data = export_user(store, "bob")
    delete_user(store, "bob")
    import_user(store, data)
    restored = store.find_named("bob", "plans")
    assert restored is not None and len(store.load(restored.id)) == 4
    store.close()
