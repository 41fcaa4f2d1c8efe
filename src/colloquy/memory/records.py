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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..text import JSONDict, Text, clean, is_blank, require_text


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
    conversation_id: Text
    start_seq: int
    end_seq: int
    text: Text
    #: The model that wrote it (e.g. ``claude-haiku-4-5`` or ``offline-summariser``).
    model: Text = ""
    previous_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    meta: JSONDict = Field(default_factory=dict)

    @property
    def seqs(self) -> range:
        return range(self.start_seq, self.end_seq + 1)

    def persist(self, store: Any, owner: Any = None) -> None:
        """Save it; with ``owner``, only while that owner exists (store/owner.py)."""
        store.save_summary(self, owner=owner)


FactOrigin = Literal["extracted", "user"]
DEFAULT_SUBJECT = "general"


def _subject(text: str) -> str:
    text = clean(text).strip()
    return DEFAULT_SUBJECT if is_blank(text) else text


class Fact(BaseModel):
    """One statement about a user, with its provenance and validity.

    Active while ``valid_until`` is None. When a newer fact replaces it, ``valid_until`` is set
    and ``superseded_by`` names the replacement. Strings follow the text rules (colloquy.text);
    a blank subject reads as "general". A blank statement is refused when a fact is stored
    (:meth:`checked`), never when one is read.
    """

    model_config = ConfigDict(frozen=True)
    id: Text = Field(default_factory=lambda: new_id("f"))
    user_id: Text
    #: What the statement is about, short: "units", "home", "employer", "current project".
    subject: Annotated[str, AfterValidator(_subject)] = DEFAULT_SUBJECT
    #: The statement itself, short: "prefers metric units".
    statement: Text
    #: Provenance: the conversation and message the fact came from (None when added by hand).
    source_conversation: Text | None = None
    source_seq: int | None = None
    valid_from: float = Field(default_factory=time.time)
    valid_until: float | None = None
    superseded_by: str | None = None
    origin: FactOrigin = "extracted"
    created_at: float = Field(default_factory=time.time)
    meta: JSONDict = Field(default_factory=dict)

    def checked(self) -> Fact:
        """This fact, ready to be stored: :class:`~colloquy.errors.InvalidTextError` when its
        statement or its user id is blank (colloquy.text.is_blank). Every store's ``add_fact``
        and ``supersede_fact`` call it, so no entry point (library, CLI, service, import) can
        store a blank fact, nor one owned by a blank user id."""
        require_text(self.user_id, "the user id")
        require_text(self.statement, "the fact's statement")
        return self

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
