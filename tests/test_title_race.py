"""An automatic title never overwrites a rename made while the title model ran (procs6 F3).

The title model here renames the conversation from another process (``colloquy sessions
rename``, a real subprocess on the same database) while it is being called, as a user on another
device would during a slow title call; the automatic title must then lose. The store's
``update_conversation(untitled_only=True)`` holds the condition in its one UPDATE, on every store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from colloquy import Chat, EchoModel, FunctionModel
from colloquy.store import Store
from conftest import make_store
from server_helpers import clean_env, colloquy


def _db_arg(store: Any, tmp_path: Path) -> str:
    if getattr(store, "schema", None):  # PostgreSQL: the throwaway schema, as a user's URL
        return f"{store.url}?options={quote(f'-csearch_path={store.schema}')}"
    return str(tmp_path / "colloquy-test.db")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_rename_from_another_process_during_the_title_call_wins(kind: str, tmp_path: Path) -> None:
    store = make_store(kind, tmp_path)
    try:
        db = _db_arg(store, tmp_path)
        calls: list[str] = []

        def slow_titler(_req: Any) -> str:
            # Meanwhile, in another process: the user renames the conversation.
            colloquy("sessions", "rename", "c_race", "Renamed elsewhere", "--db", db,
                     env=clean_env())
            calls.append("titled")
            return "Automatic Title"

        chat = Chat(EchoModel(), store=store, session_id="c_race",
                    title_model=FunctionModel(slow_titler))
        chat.send("plan a trip to Lisbon")
        assert calls == ["titled"]
        assert store.get_conversation("c_race").title == "Renamed elsewhere"
        assert chat.conversation is not None and chat.conversation.title == "Renamed elsewhere"
        # Without a rename the automatic title is written, as before.
        other = Chat(EchoModel(), store=store, session_id="c_plain",
                     title_model=FunctionModel(lambda _r: "Automatic Title"))
        other.send("plan a trip to Porto")
        assert store.get_conversation("c_plain").title == "Automatic Title"
    finally:
        store.close()


def test_untitled_only_writes_only_an_unset_title(store: Store) -> None:
    store.create_conversation(id="c_new")
    store.create_conversation(id="c_named", title="Mine")
    assert store.update_conversation("c_new", title="Auto", untitled_only=True).title == "Auto"
    kept = store.update_conversation("c_named", title="Auto", untitled_only=True)
    assert kept.title == "Mine" and store.get_conversation("c_named").title == "Mine"
    # A second automatic title loses to the first one too.
    assert store.update_conversation("c_new", title="Other", untitled_only=True).title == "Auto"
