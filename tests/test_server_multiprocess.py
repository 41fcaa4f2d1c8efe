"""Several server processes over one database serve the same users consistently: two
``colloquy serve`` processes (and one with ``--workers 2``) over one SQLite file, and over
PostgreSQL when COLLOQUY_TEST_POSTGRES_URL is set (always in CI). Users are created with the
CLI, as an operator would."""

from __future__ import annotations

import concurrent.futures as cf
from contextlib import closing
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from colloquy.store import open_store
from colloquy.store.users import issue_token
from pg_helpers import drop_schema, new_schema, postgres_kinds, require_postgres_url
from server_helpers import add_user, bearer, parse_sse, serve_subprocess, texts


@pytest.fixture(params=["sqlite", *postgres_kinds()])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    import psycopg
    from psycopg import sql

    base = require_postgres_url()
    schema = new_schema()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    # Every connection of every server process uses the throwaway schema.
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    drop_schema(base, schema)


def _valid_log(messages: list[dict[str, object]]) -> None:
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)


def test_two_servers_over_one_database(db: str, tmp_path: Path) -> None:
    ada = add_user(db, "ada")  # the operator's way, once; the library's way for the others
    with closing(open_store(db)) as store:
        bob = issue_token(store, "bob")  # type: ignore[arg-type]
    with serve_subprocess(db, log=tmp_path / "a.log") as a, \
            serve_subprocess(db, log=tmp_path / "b.log") as b:
        A = httpx.Client(base_url=a, headers=bearer(ada), timeout=30)
        B = httpx.Client(base_url=b, headers=bearer(ada), timeout=30)
        cid = A.post("/v1/conversations", json={"title": "shared"}).json()["id"]
        # Created on A, listed and continued on B, read back on A.
        assert [c["id"] for c in B.get("/v1/conversations").json()["conversations"]] == [cid]
        assert "received 1 message" in B.post(f"/v1/conversations/{cid}/messages",
                                              json={"content": "from B"}).json()["text"]
        events = parse_sse(A.post(f"/v1/conversations/{cid}/messages",
                                  json={"content": "from A", "stream": True}))
        assert "received 3 messages" in texts(events)
        detail = A.get(f"/v1/conversations/{cid}").json()
        assert [m["text"] for m in detail["messages"] if m["role"] == "user"] == ["from B", "from A"]
        # Another user is refused by both, and a token added while they run works on both.
        for url in (a, b):
            r = httpx.get(f"{url}/v1/conversations/{cid}", headers=bearer(bob))
            assert r.status_code == 404
        with closing(open_store(db)) as store:
            carol = issue_token(store, "carol")  # type: ignore[arg-type]
        assert httpx.get(f"{b}/v1/me", headers=bearer(carol)).json() == {"user_id": "carol"}

        # Concurrent turns on one conversation through both servers: serialised, none lost.
        def say(i: int) -> int:
            client = A if i % 2 else B
            return client.post(f"/v1/conversations/{cid}/messages",
                               json={"content": f"turn {i}"}).status_code

        with cf.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(say, range(12))) == [200] * 12
        messages = B.get(f"/v1/conversations/{cid}").json()["messages"]
        _valid_log(messages)
        users = [m["text"] for m in messages if m["role"] == "user"]
        assert sorted(users[2:]) == sorted(f"turn {i}" for i in range(12))
        A.close()
        B.close()
    store = open_store(db)
    try:
        assert store.get_conversation(cid).last_seq == 28
    finally:
        store.close()


def test_serve_with_several_workers(tmp_path: Path) -> None:
    db = str(tmp_path / "workers.db")
    token = add_user(db, "ada")
    with serve_subprocess(db, "--workers", "2", "--policy", "memory",
                          log=tmp_path / "w.log") as url:
        client = httpx.Client(base_url=url, headers=bearer(token), timeout=30)
        ids = [client.post("/v1/conversations", json={}).json()["id"] for _ in range(6)]

        def turn(cid: str) -> str:
            with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
                c.post(f"/v1/conversations/{cid}/messages", json={"content": "one"})
                return str(c.post(f"/v1/conversations/{cid}/messages",
                                  json={"content": "two"}).json()["text"])

        with cf.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(turn, ids))
        assert all("received 3 messages" in r for r in replies)
        listed = client.get("/v1/conversations").json()["conversations"]
        assert sorted(c["id"] for c in listed) == sorted(ids)
        assert {c["message_count"] for c in listed} == {4}
        # --policy memory: a fact added through one worker is in every worker's next request.
        client.post("/v1/memory", json={"statement": "prefers metric units", "subject": "units"})
        for _ in range(4):
            ctx = client.get(f"/v1/conversations/{ids[0]}/context",
                             params={"message": "how far is it?"}).json()
            assert "prefers metric units" in str(ctx["request"])
        client.close()
    log = (tmp_path / "w.log").read_text()
    assert log.count("Application startup complete") == 2  # two worker processes served


def oa_turn(url: str, token: str, conversation: str, text: str) -> str:
    """One turn through the OpenAI-compatible route, with the real openai SDK as the client."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=30)
    done = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": text}],
        extra_headers={"X-Colloquy-Conversation": conversation})
    return str(done.choices[0].message.content)


def test_no_process_serves_what_another_deleted_or_replaced(db: str, tmp_path: Path) -> None:
    """Issue 12, item 1: process B has served (and cached: Chat, recall index, summary) a
    conversation; process A deletes it and the id is used again, or the user is deleted and
    added again. B never serves a deleted message, never splices one into a new request, and
    answers the new conversation's turns (no 409 from its stale log)."""
    ada = add_user(db, "ada")
    memory = ("--policy", "memory", "--max-input-tokens", "700")  # summaries and recall too
    cid = "support-77"
    with serve_subprocess(db, *memory, log=tmp_path / "a.log") as a, \
            serve_subprocess(db, *memory, log=tmp_path / "b.log") as b:
        B = httpx.Client(base_url=b, headers=bearer(ada), timeout=30)
        A = httpx.Client(base_url=a, headers=bearer(ada), timeout=30)
        for i in range(8):  # long enough that older turns are summarised and recalled on B
            oa_turn(b, ada, cid, f"OLDSECRET-{i}: my locker code is {1000 + i} " + "pad " * 30)
        ctx = B.get(f"/v1/conversations/{cid}/context", params={"message": "what is my locker code?"})
        assert ctx.status_code == 200 and "OLDSECRET" in ctx.text

        # Deleted on A (native route): B serves nothing of it any more.
        assert A.delete(f"/v1/conversations/{cid}").status_code == 204
        assert B.get(f"/v1/conversations/{cid}/context", params={"message": "x"}).status_code == 404
        assert B.get(f"/v1/conversations/{cid}").status_code == 404
        assert B.post(f"/v1/conversations/{cid}/messages", json={"content": "hello?"}).status_code == 404

        # The id is used again through the OpenAI-compatible route, on A then on B.
        oa_turn(a, ada, cid, "new-1")
        assert "new-2 via B" in oa_turn(b, ada, cid, "new-2 via B")  # no 409: B's log is fresh
        for i in range(3, 9):
            oa_turn(a, ada, cid, f"new-{i}")
        ctx = B.get(f"/v1/conversations/{cid}/context", params={"message": "what is my locker code?"})
        assert ctx.status_code == 200
        assert "OLDSECRET" not in ctx.text and "new-8" in ctx.text
        assert "OLDSECRET" not in B.get(f"/v1/conversations/{cid}").text
        reply = B.post(f"/v1/conversations/{cid}/messages", json={"content": "and now?"}).json()
        assert reply["seq"] == 18  # the new conversation had 8 turns before this one

        # The user is deleted on A and added again: B serves nothing of the old account.
        assert A.delete("/v1/me").status_code == 200
        assert B.get("/v1/me").status_code == 401
        ada2 = add_user(db, "ada")
        oa_turn(b, ada2, cid, "third life")
        B2 = httpx.Client(base_url=b, headers=bearer(ada2), timeout=30)
        ctx = B2.get(f"/v1/conversations/{cid}/context", params={"message": "what did I say before, and my locker code?"})
        assert ctx.status_code == 200 and "third life" in ctx.text
        assert "OLDSECRET" not in ctx.text and "new-" not in ctx.text
        assert [m["text"] for m in B2.get(f"/v1/conversations/{cid}").json()["messages"]
                if m["role"] == "user"] == ["third life"]
        for client in (A, B, B2):
            client.close()
