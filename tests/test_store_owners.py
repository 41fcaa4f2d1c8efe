"""The Store contract's generations and owners, on every store kind (the ``store`` fixture):
``read_log`` returns a conversation's generation with its new messages, a conversation (or user)
deleted and created anew has another generation, and a write on behalf of an owner that is gone
raises OwnerGone and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from colloquy.errors import ConversationNotFound, OwnerGone
from colloquy.memory.records import Fact, Summary
from colloquy.messages import Message
from colloquy.store import NewMessage, Store
from colloquy.store.owner import Owner


def nm(text: str) -> NewMessage:
    return NewMessage(message=Message.user(text))


def test_read_log_returns_the_generation_with_the_new_messages(store: Store) -> None:
    assert store.read_log("c") is None
    conv = store.create_conversation(id="c")
    empty = store.read_log("c")
    assert empty is not None and empty.generation == conv.generation and empty.messages == []
    store.append("c", [nm("one"), nm("two"), nm("three")])
    store.update_conversation("c", title="t")  # updates keep the generation
    read = store.read_log("c", after_seq=1, limit=1)
    assert read is not None and read.generation == conv.generation and read.last_seq == 3
    assert [sm.message.text for sm in read.messages] == ["two"]
    store.delete_conversation("c")
    assert store.read_log("c") is None
    again = store.create_conversation(id="c")
    assert again.generation != conv.generation
    fresh = store.read_log("c")
    assert fresh is not None and fresh.generation == again.generation and fresh.messages == []


def test_writes_for_a_conversation_that_is_gone_or_replaced_are_refused(store: Store) -> None:
    s: Any = store
    old = store.create_conversation(id="c", user_id="ana")
    store.append("c", [nm("hello")])
    mine = Owner(conversation_id="c", generation=old.generation)
    assert store.update_conversation("c", title="ok", owner=mine).title == "ok"
    store.delete_conversation("c")
    new = store.create_conversation(id="c", user_id="ana")
    writes = {
        "append": lambda: store.append("c", [nm("late reply")], owner=mine),
        "title": lambda: store.update_conversation("c", title="old title", owner=mine),
        "summary": lambda: s.save_summary(Summary(conversation_id="c", start_seq=1, end_seq=1,
                                                  text="old summary"), owner=mine),
        "cursor": lambda: s.set_memory_cursor("c", "facts", 1, owner=mine),
        "fact": lambda: s.add_fact(Fact(user_id="ana", subject="s", statement="old fact",
                                        source_conversation="c"), owner=mine),
    }
    for name, write in writes.items():
        with pytest.raises(OwnerGone):
            write()
    now = store.get_conversation("c")
    assert now.generation == new.generation and now.title is None and now.last_seq == 0
    assert s.list_summaries("c") == [] and s.get_memory_cursor("c", "facts") == 0
    assert s.list_facts("ana") == []
    # Without an owner, or with the new generation, the same writes go through.
    theirs = Owner(conversation_id="c", generation=new.generation)
    store.append("c", [nm("new")], owner=theirs)
    assert store.update_conversation("c", title="new", owner=theirs).title == "new"
    store.delete_conversation("c")
    with pytest.raises(ConversationNotFound):  # OwnerGone is a ConversationNotFound
        s.save_summary(Summary(conversation_id="c", start_seq=1, end_seq=1, text="x"), owner=theirs)


def test_writes_for_a_user_deleted_and_added_again_are_refused(store: Store) -> None:
    s: Any = store
    first = s.add_user("ana", "hash-1")
    owner = Owner(user_id="ana", user_generation=first.generation)
    assert s.add_fact(Fact(user_id="ana", subject="s", statement="kept"), owner=owner)
    assert s.add_user("ana", "hash-2", replace=True).generation == first.generation  # rotation
    s.remove_user("ana")
    with pytest.raises(OwnerGone):
        s.add_fact(Fact(user_id="ana", subject="s", statement="late"), owner=owner)
    second = s.add_user("ana", "hash-3")
    assert second.generation != first.generation
    with pytest.raises(OwnerGone):
        store.create_conversation(id="late", user_id="ana", owner=owner)
    assert store.find_conversation("late") is None
    assert [f.statement for f in s.list_facts("ana")] == ["kept"]
    assert s.user_for_token_hash("hash-3").generation == second.generation
