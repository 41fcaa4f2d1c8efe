"""The text rules' edges (colloquy.text) after issue 11: invisible-only text is blank, a blank
user id owns nothing, non-UTF-8 bytes in SQLite rows read as U+FFFD, blank values in an import,
and ``memory forget`` of an unknown id."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from colloquy import Chat, EchoModel, MemoryStore, ScriptedModel, SQLiteStore
from colloquy.cli import main
from colloquy.errors import InvalidTextError
from colloquy.memory.records import Fact
from colloquy.rights import export_user, import_user
from colloquy.store import Conversation, Store
from colloquy.text import clean_persona, clean_title, is_blank, require_text

FFFD = "\ufffd"
#: Text that shows nothing: zero-width and other format (Cf) characters, alone or with spaces.
INVISIBLE = ["\u200b", "\ufeff", "\u200b\u200c\u200d", "\u2060", " \u200b\n\ufeff ", "\u00ad",
             "\u202e\u200e", "\u3000\u200b\u2028"]
#: Visible text holding format characters: kept as it is.
VISIBLE = ["\U0001f469\u200d\U0001f4bb", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
           "\u200bx", "a\ufeff"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- 1. invisible-only text is blank -------------------------------------------------------------


@pytest.mark.parametrize("blank", INVISIBLE)
def test_invisible_only_text_is_blank_everywhere_the_rules_apply(blank: str) -> None:
    assert is_blank(blank)
    with pytest.raises(InvalidTextError, match="the message is empty"):
        require_text(blank, "the message")
    assert clean_title(blank) is None and clean_persona(blank) == ""
    assert Fact(user_id="u", subject=blank, statement="x").subject == "general"
    assert Conversation(id="c", title=blank, persona=blank, model=blank, name=blank).model_dump(
        include={"title", "persona", "model", "name"}) == {
        "title": None, "persona": "", "model": "", "name": "c"}


@pytest.mark.parametrize("text", VISIBLE)
def test_format_characters_inside_visible_text_are_kept(text: str) -> None:
    assert not is_blank(text) and require_text(text, "the message") == text


def test_invisible_only_messages_titles_and_facts_are_refused(store: Store) -> None:
    model = ScriptedModel(["unused"])
    chat = Chat(model, store=store, session_id="zw", user_id="ada", title_model=False)
    for blank in INVISIBLE:
        with pytest.raises(InvalidTextError, match="the message is empty"):
            chat.send(blank)
        with pytest.raises(InvalidTextError, match="the fact's statement is empty"):
            store.add_fact(Fact(user_id="ada", subject="x", statement=blank))
        with pytest.raises(InvalidTextError, match="the title is empty"):
            store.create_conversation(id="t", title=blank)
    assert model.requests == [] and store.find_conversation("zw") is None
    assert store.list_facts("ada") == []


# -- 2. a blank user id owns nothing -------------------------------------------------------------


@pytest.mark.parametrize("user", ["", "  ", "\u200b", "\t\u3000"])
def test_a_blank_user_id_owns_no_fact_and_no_conversation(store: Store, user: str) -> None:
    with pytest.raises(InvalidTextError, match="the user id is empty"):
        store.add_fact(Fact(user_id=user, subject="x", statement="likes tea"))
    kept = store.add_fact(Fact(user_id="ada", subject="x", statement="likes tea"))
    with pytest.raises(InvalidTextError, match="the user id is empty"):
        store.supersede_fact(kept.id, Fact(user_id=user, subject="x", statement="likes coffee"))
    with pytest.raises(InvalidTextError, match="the user id is empty"):
        store.create_conversation(id="owned", user_id=user)
    assert store.find_conversation("owned") is None
    assert [f.statement for f in store.list_facts("ada")] == ["likes tea"]
    assert store.list_facts(user, include_retired=True) == []


def test_cli_memory_add_refuses_a_blank_user(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "m.db")
    code, out, err = cli(capsys, "memory", "add", "--user", "  ", "likes tea", "--db", db)
    assert code != 0 and "user id is empty" in err and "Traceback" not in err and out == ""
    assert SQLiteStore(db).list_facts("  ", include_retired=True) == []


# -- 3. non-UTF-8 bytes in SQLite rows -------------------------------------------------------------


def test_rows_with_bytes_that_are_not_utf8_read_everywhere(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "bad.db")
    store = SQLiteStore(db)
    Chat(EchoModel(), store=store, session_id="s", user_id="ann", title_model=False).send("hi")
    store.add_fact(Fact(user_id="ann", subject="drink", statement="likes tea"))
    store.close()
    raw = sqlite3.connect(db)  # another tool writes bytes that are not UTF-8
    raw.execute("UPDATE conversations SET title = CAST(X'6361E9FF00' AS TEXT)")
    raw.execute("UPDATE facts SET statement = CAST(X'6C696B6573E92074' AS TEXT)")
    raw.commit()
    raw.close()
    code, out, err = cli(capsys, "sessions", "list", "--db", db)
    assert code == 0 and f"ca{FFFD}{FFFD}" in out, err
    code, out, err = cli(capsys, "sessions", "show", "s", "--json", "--db", db)
    assert code == 0 and json.loads(out)["conversation"]["title"] == f"ca{FFFD}{FFFD}{FFFD}", err
    code, out, err = cli(capsys, "sessions", "export", "s", "-o", str(tmp_path / "s.json"),
                         "--db", db)
    assert code == 0, err
    code, out, err = cli(capsys, "users", "export", "ann", "-o", str(tmp_path / "u.json"),
                         "--db", db)
    assert code == 0, err
    exported = json.loads((tmp_path / "u.json").read_text(encoding="utf-8"))
    assert FFFD in json.dumps(exported, ensure_ascii=False)
    code, out, err = cli(capsys, "memory", "list", "--user", "ann", "--db", db)
    assert code == 0 and f"likes{FFFD} t" in out, err
    code, out, err = cli(capsys, "context", "s", "--json", "--db", db)
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", io.StringIO("again\n"))
    code, out, err = cli(capsys, "chat", "--model", "echo", "--session", "s", "--user", "ann",
                         "--db", db)
    assert code == 0 and "Traceback" not in err, err


# -- 4. blank values in an import ----------------------------------------------------------------


def test_import_blank_name_and_model_are_none_and_dropped_facts_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = MemoryStore()
    Chat(EchoModel(), store=src, session_id="c1", user_id="zed", title_model=False).send("hi")
    src.add_fact(Fact(user_id="zed", subject="s", statement="likes tea"))
    data = export_user(src, "zed")
    data["sessions"][0]["conversation"].update(name="  ", model=" ")
    data["facts"].append({**data["facts"][0], "id": "f_blank", "statement": "\u200b "})
    store = MemoryStore()
    report = import_user(store, data)
    got = store.get_conversation("c1")
    assert got.name == "c1" and got.model == ""
    assert report.dropped_facts == ["f_blank"]
    assert [f.statement for f in store.list_facts("zed")] == ["likes tea"]
    # Resumed by its name, with the default model: the turn goes through.
    reply = Chat(EchoModel(), store=store, session_id="c1", user_id="zed",
                 title_model=False).send("again")
    assert reply.text
    # The CLI names what was left out.
    path = tmp_path / "zed.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    code, out, err = cli(capsys, "users", "import", str(path), "--db", str(tmp_path / "d.db"))
    assert code == 0 and "f_blank" in err and "blank statement" in err, err
    code, out, err = cli(capsys, "sessions", "list", "--user", "zed", "--db",
                         str(tmp_path / "d.db"))
    assert code == 0 and out.split("\t")[0] == "c1", out


# -- 5. memory forget of an unknown id: one outcome ----------------------------------------------------


def test_memory_forget_of_an_unknown_id_forgets_nothing_and_says_one_thing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "f.db")
    code, fid, _ = cli(capsys, "memory", "add", "--user", "ann", "likes tea", "--db", db)
    fid = fid.strip()
    code, out, err = cli(capsys, "memory", "forget", "--user", "ann", "nosuch", "--db", db)
    assert code == 2 and "no such fact" in err and "nosuch" in err and "forgot " not in err
    code, out, err = cli(capsys, "memory", "forget", "--user", "ann", fid, "nosuch", "--db", db)
    assert code == 2 and "forgot " not in err and "nothing was forgotten" in err
    assert [f.id for f in SQLiteStore(db).list_facts("ann")] == [fid]
    code, out, err = cli(capsys, "memory", "forget", "--user", "ann", fid, "--db", db)
    assert code == 0 and "forgot 1 fact" in err
