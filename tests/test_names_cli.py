"""Every CLI command that takes a session resolves it as ``colloquy chat --user U --session
NAME`` does: with ``--user``, by the name that user knows (the one the service and ``sessions
list`` show), never reaching another user's conversation of that name or id; without, by id or
by a name only one user has (an operator's view across users); and the memory
API and ``memory list`` show a fact's source conversation by that name, not an internal id.
On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from colloquy import Chat, EchoModel
from colloquy.cli import main
from colloquy.memory.records import Fact
from colloquy.server import create_app
from colloquy.store import Store, open_store
from colloquy.store.users import issue_token
from server_helpers import bearer
from test_server_multiprocess import db  # noqa: F401 - the two-back-end fixture


def named(store: Store, user: str, name: str, text: str) -> str:
    """A conversation ``user`` calls ``name``, with a random id and one turn; returns the id."""
    conv = store.create_conversation(user_id=user, name=name)
    Chat(EchoModel(), store=store, session_id=conv.id, user_id=user).send(text)
    return conv.id


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sessions_commands_resolve_a_users_name(db: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    store = open_store(db)
    ann = named(store, "ann", "plans", "ann's plan")
    bob = named(store, "bob", "plans", "bob's plan")
    carl = store.create_conversation(id="notes", user_id="carl").id  # an id that is a name
    try:
        # show: ann's "plans", not bob's; by her name or her own id, never another user's.
        for ref in ("plans", ann):
            code, out, _ = run(capsys, "sessions", "show", ref, "--user", "ann", "--db", db)
            assert code == 0 and "ann's plan" in out and "bob's plan" not in out
            assert out.startswith(f"session plans (id {ann}) · ")
        code, out, _ = run(capsys, "sessions", "show", "plans", "--user", "bob", "--db", db,
                           "--json")
        assert code == 0 and json.loads(out)["conversation"]["id"] == bob
        for ref in ("notes", bob):  # another user's id: not found, as for a free name
            code, _, err = run(capsys, "sessions", "show", ref, "--user", "ann", "--db", db)
            assert code == 1 and f"no conversation with id {ref!r}" in err
        # Without --user: an id, else the one conversation of that name (as sessions list shows
        # it); a name several users have is refused with their names, never guessed.
        assert run(capsys, "sessions", "show", carl, "--db", db)[0] == 0
        code, _, err = run(capsys, "sessions", "show", "plans", "--db", db)
        assert code == 2 and "several users have a conversation called 'plans' ('ann', 'bob')" \
            in err and "add --user" in err
        solo = named(store, "dan", "solo-1", "dan's line")
        code, out, _ = run(capsys, "sessions", "show", "solo-1", "--db", db)
        assert code == 0 and out.startswith(f"session solo-1 (id {solo}) · ") and "dan's line" in out
        assert run(capsys, "sessions", "show", "nothing-here", "--db", db)[0] == 1

        # export, rename, context, delete: each on ann's "plans" only.
        code, out, _ = run(capsys, "sessions", "export", "plans", "--user", "ann", "--db", db)
        exported = json.loads(out)
        assert code == 0 and exported["conversation"]["id"] == ann
        assert [m["message"]["content"][0]["text"] for m in exported["messages"]][0] == "ann's plan"
        code, _, err = run(capsys, "sessions", "rename", "plans", "Ann's trip", "--user", "ann",
                           "--db", db)
        assert code == 0 and "renamed plans: Ann's trip" in err
        assert store.get_conversation(ann).title == "Ann's trip"
        assert store.get_conversation(bob).title == "bob's plan"  # its automatic title
        code, out, _ = run(capsys, "context", "plans", "--user", "ann", "--json", "--db", db)
        assert code == 0 and "ann's plan" in out and "bob's plan" not in out
        code, _, err = run(capsys, "sessions", "delete", "plans", "--user", "ann", "--db", db)
        assert code == 0 and f"deleted session plans (id {ann})" in err
        assert store.find_conversation(ann) is None
        assert store.find_conversation(bob) is not None and store.find_conversation(carl)
        code, _, _ = run(capsys, "sessions", "delete", "plans", "--user", "ann", "--db", db)
        assert code == 1  # gone: bob's of that name is not the next in line
        assert store.find_conversation(bob) is not None
    finally:
        store.close()


def test_a_facts_source_is_the_name_the_user_knows(db: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    store = open_store(db)
    try:
        ann_token = issue_token(store, "ann")
        trip = named(store, "ann", "trip", "I live in Faro")
        other = named(store, "bob", "trip", "I live in Porto")
        store.add_fact(Fact(user_id="ann", subject="home", statement="lives in Faro",
                            source_conversation=trip, source_seq=1))
        store.add_fact(Fact(user_id="ann", subject="tea", statement="likes tea", origin="user"))
        # A source that is not ann's conversation (corrupt or foreign) is never shown.
        store.add_fact(Fact(user_id="ann", subject="x", statement="odd source",
                            source_conversation=other, source_seq=1))
        client = TestClient(create_app(store=store, model=EchoModel(), environ={},
                                       rate_limit=None))

        def sources() -> dict[str, tuple[str | None, int | None]]:
            r = client.get("/v1/memory", headers=bearer(ann_token))
            assert r.status_code == 200, r.text
            return {f["subject"]: (f["source_conversation"], f["source_seq"])
                    for f in r.json()["facts"]}

        assert sources() == {"home": ("trip", 1), "tea": (None, None), "x": (None, None)}
        code, out, _ = run(capsys, "memory", "list", "--user", "ann", "--db", db)
        assert code == 0 and "from trip#1" in out and trip not in out and other not in out
        assert run(capsys, "sessions", "show", "trip", "--user", "ann", "--db", db)[0] == 0

        store.delete_conversation(trip)  # facts stay with their user; the name is gone
        assert sources()["home"] == (None, None)
        code, out, _ = run(capsys, "memory", "list", "--user", "ann", "--db", db)
        assert "lives in Faro" in out and "from a deleted conversation" in out and trip not in out
    finally:
        store.close()


def test_sessions_help_says_how_names_resolve(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for command in (["sessions", "show"], ["sessions", "export"], ["sessions", "delete"],
                    ["sessions", "rename"], ["context"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--user ID" in capsys.readouterr().out


def test_a_name_given_in_bytes_that_are_not_utf8_is_refused_never_merged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--session $'\\xff'`` and ``--session $'\\xfe'`` reach Python as lone surrogates
    (surrogateescape), which the text rule turns into U+FFFD: both were one conversation named
    '\ufffd'. Every name or id argument now refuses them, naming the bytes, and nothing is stored."""
    import subprocess
    import sys

    from server_helpers import clean_env

    db = str(tmp_path / "c.db")
    for raw in (b"\xff", b"caf\xe9"):
        p = subprocess.run([sys.executable, "-m", "colloquy", "chat", "--model", "echo",
                            "--db", db, "--session", raw], input=b"hello\n", capture_output=True,
                           env=clean_env(LC_ALL="C.UTF-8"), timeout=60)
        err = p.stderr.decode()
        assert p.returncode == 2 and "Traceback" not in err, err
        shown = raw.decode("ascii", "backslashreplace")  # 'caf\xe9'
        assert f"argument --session: '{shown}' is not valid UTF-8" in err
    store = open_store(db)
    try:
        assert store.list_conversations() == []
    finally:
        store.close()
    # Every other name or id argument, in process (argv as Python decodes it).
    bad = "x\udcff"
    for argv in (["chat", "--user", bad], ["sessions", "list", "--user", bad],
                 ["sessions", "show", bad], ["sessions", "show", "s", "--user", bad],
                 ["context", bad], ["memory", "list", "--user", bad],
                 ["users", "add", bad], ["users", "revoke", bad],
                 ["users", "export", bad], ["users", "delete", bad, "--yes"]):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--db", db])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "'x\\xff' is not valid UTF-8" in err, (argv, err)
