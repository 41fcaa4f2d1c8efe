"""The engine's memory hooks, kept out of chat.py so the turn there stays readable.

* :func:`persist_derived`: a policy returns derived records (summaries) in ``Context.derived``;
  the engine persists them right after building the context, before the model call, so a failed
  call does not waste the summariser's work. Each record persists itself (``persist(store)``).
* :func:`extract_after_turn`: after the reply is stored, run the chat's fact extraction (if
  any). Both return warning notes and never raise: memory is a best effort that must never cost
  a turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from ..errors import brief


def persist_derived(store: Any, records: Iterable[Any], owner: Any = None) -> list[str]:
    """``owner`` (a :class:`~colloquy.store.owner.Owner`): on whose behalf; a record whose
    owner was deleted meanwhile is discarded with a note (deletion wins)."""
    notes: list[str] = []
    for record in records:
        persist = getattr(record, "persist", None)
        if persist is None:
            notes.append(f"cannot persist a derived {type(record).__name__}: it has no persist()")
            continue
        try:
            if owner is not None and "owner" in inspect.signature(persist).parameters:
                persist(store, owner=owner)
            else:
                persist(store)
        except Exception as e:  # noqa: BLE001 - a lost summary costs money, not the turn
            notes.append(f"could not store a derived {type(record).__name__} "
                         f"({brief(e)}); it will be rebuilt")
    return notes


def extract_after_turn(chat: Any) -> list[str]:
    """Run ``chat.extract_facts`` on the messages since the last extraction."""
    extraction = getattr(chat, "extract_facts", None)
    if extraction is None:
        return []
    # The current branch only (colloquy.branches): a superseded or blocked turn is no source.
    applied, notes = extraction.run(chat.store, chat.user_id, chat.session_id,
                                    chat._branch.visible(chat._log), owner=chat.owner)
    if applied is not None and applied.usage is not None:
        chat.record_side_call("facts", applied.model or "unknown", applied.usage, applied.cost_usd)
    return notes
