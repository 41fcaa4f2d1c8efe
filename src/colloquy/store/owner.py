"""Whose a write is, so that deletion wins over work in flight (issue 12).

A turn runs for seconds (a model call, then a summary, a fact extraction, a title): long enough
for its user or conversation to be deleted meanwhile, by another request or another process.
Every write made on behalf of an owner therefore names it (:class:`Owner`), and the store checks,
*in the write's own transaction*, that the owner still exists and is the same one: a conversation
or user deleted and created anew under the same id has another **generation** (a random token
set at creation). A write whose owner is gone raises :class:`~colloquy.errors.OwnerGone` and
writes nothing.

Why in the transaction: a check before the write would race the deletion. PostgreSQL runs at
READ COMMITTED, so a check alone is not enough either: the write locks the owner's row
(``FOR KEY SHARE``), and a deletion locks the rows it deletes first (``FOR UPDATE``), so the
two are ordered: either the write commits first and the deletion then removes what it wrote,
or the deletion commits first and the write finds no owner. SQLite's write transactions are
serial (``BEGIN IMMEDIATE``); the memory store holds its lock.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import OwnerGone
from .caches import forget_cached


def new_generation() -> str:
    """A fresh generation token (64 random bits, hex)."""
    return uuid.uuid4().hex[:16]


class Owner(BaseModel):
    """On whose behalf a write is made.

    * ``conversation_id``: the conversation must exist; with ``generation``, as that generation
      (the one the work read).
    * ``user_id`` with ``user_generation``: the service user must exist, as that generation
      (a user without a record, e.g. the CLI's ``--user``, is checked through a conversation).
    """

    model_config = ConfigDict(frozen=True)
    conversation_id: str | None = None
    generation: str | None = None
    user_id: str | None = None
    user_generation: str | None = None




def check_owner(owner: Owner | None, conversation: str | None, user: str | None,
                store: Any = None) -> None:
    """Raise :class:`OwnerGone` unless the owner still exists as it was: ``conversation`` and
    ``user`` are the generations read (under lock) for its conversation and user records, None
    where the record is missing (each is looked at only when the owner names it)."""
    if owner is None:
        return
    if owner.conversation_id is not None and (
        conversation is None or (owner.generation is not None and conversation != owner.generation)
    ):
        forget_cached([owner.conversation_id], store)  # what this process still holds of it goes too
        raise OwnerGone(f"conversation {owner.conversation_id!r}", owner.conversation_id)
    if owner.user_id is not None and owner.user_generation is not None and user != owner.user_generation:
        raise OwnerGone(f"user {owner.user_id!r}")


__all__ = ["Owner", "check_owner", "new_generation"]
