"""Derived memory records: summaries of older turns and facts about a user.

Why records beside the log rather than edits of it: the log is the single source of truth.
A summary says which sequence numbers it covers and never replaces them (switching policy later
still sees every turn); a fact keeps where it came from (conversation and seq) and when it held
(valid_from / valid_until), so a superseded fact is retired and linked to its successor, never
silently overwritten or duplicated.

Each record has ``persist(store)``: the engine persists whatever a policy returns in
``Context.derived`` by calling it, so policies never write.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def new_id(prefix: str) -> str:
    """Same shape as the store's ids (``f_3f9a1b2c4d5e``); defined here so records do not
    import the store."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Summary(BaseModel):
    """A summary of the messages ``start_seq..end_seq`` (inclusive) of one conversation.

    Incremental: ``previous_id`` names the summary it folded in, so the chain shows how it grew.
    """

    model_config = ConfigDict(frozen=True)
    id: str = Field(default_factory=lambda: new_id("s"))
    conversation_id: str
    start_seq: int
    end_seq: int
    text: str
    #: The model that wrote it (e.g. ``claude-haiku-4-5`` or ``offline-summariser``).
    model: str = ""
    previous_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def seqs(self) -> range:
        return range(self.start_seq, self.end_seq + 1)

    def persist(self, store: Any) -> None:
        store.save_summary(self)


FactOrigin = Literal["extracted", "user"]


class Fact(BaseModel):
    """One statement about a user, with its provenance and validity.

    Active while ``valid_until`` is None. When a newer fact replaces it, ``valid_until`` is set
    and ``superseded_by`` names the replacement.
    """

    model_config = ConfigDict(frozen=True)
    id: str = Field(default_factory=lambda: new_id("f"))
    user_id: str
    #: What the statement is about, short: "units", "home", "employer", "current project".
    subject: str
    #: The statement itself, short: "prefers metric units".
    statement: str
    #: Provenance: the conversation and message the fact came from (None when added by hand).
    source_conversation: str | None = None
    source_seq: int | None = None
    valid_from: float = Field(default_factory=time.time)
    valid_until: float | None = None
    superseded_by: str | None = None
    origin: FactOrigin = "extracted"
    created_at: float = Field(default_factory=time.time)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.valid_until is None

    @property
    def key(self) -> str:
        """The duplicate key: the same statement, however spelled or cased."""
        return normalise(self.statement)


_SPACES = re.compile(r"\s+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def normalise(text: str) -> str:
    """Case-, width- and whitespace-insensitive form, without edge punctuation."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _EDGE.sub("", _SPACES.sub(" ", text).strip())


__all__ = ["Fact", "FactOrigin", "Summary", "normalise"]
