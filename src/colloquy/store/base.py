"""What a store is: an append-only log of messages per conversation, plus conversation records.

Why append-only: a model API is stateless, so a naive client stores (and rewrites) the whole
message list every turn, and each turn costs more than the last. Here a turn appends one row per
new message keyed by (conversation, sequence); nothing is ever rewritten, so a turn's time and
bytes stay flat however long the conversation gets. Derived records (summaries, facts, indexes)
sit beside the log and never replace it.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..errors import ConfigError, ConversationNotFound, StoreError
from ..messages import Message, StoredMessage
from ..text import (
    JSONDict, Text, clean_json, clean_or_empty, clean_persona, clean_title, is_blank, require_name,
    require_text,
)
from ..usage import Usage
from .caches import forget_cached, register_cache
from .memory_records import MemoryRecordStore
from .owner import Owner, new_generation


def users_conversation(store: Any, user_id: str, ref: str) -> Conversation | None:
    """The conversation ``ref`` means for ``user_id`` (the CLI's ``--user U --session REF``):
    the one they call ``ref``, else their own with that id; None when they have neither (a free
    name, or a name that is only another user's id: theirs is never reached)."""
    conv: Conversation | None = store.find_named(user_id, ref)
    if conv is None:
        conv = store.find_conversation(ref)
        if conv is not None and conv.user_id != user_id:
            return None
    return conv


def resolve_conversation(store: Any, ref: str, user_id: str | None = None) -> Conversation:
    """The conversation a CLI argument means: with ``user_id``, the one that user calls ``ref``
    (:func:`users_conversation`, as ``colloquy chat --user U --session REF`` resolves it), never
    another user's; without, the conversation whose id is ``ref``, else the one conversation
    called ``ref`` (what ``sessions list`` shows). :class:`ConversationNotFound` when there is
    none; :class:`ConfigError` when several users have a conversation called ``ref`` (the
    message names them: add ``--user``)."""
    if user_id is not None:
        conv = users_conversation(store, user_id, ref)
    else:
        conv = store.find_conversation(ref)
        if conv is None:
            named: list[Conversation] = store.list_named(ref, limit=_SHOWN_OWNERS + 1)
            if len(named) > 1:
                owners = ", ".join(sorted(repr(c.user_id) for c in named[:_SHOWN_OWNERS]))
                more = ", ..." if len(named) > _SHOWN_OWNERS else ""
                raise ConfigError(f"several users have a conversation called {ref!r} "
                                  f"({owners}{more}): add --user to say whose")
            conv = named[0] if named else None
    if conv is None:
        raise ConversationNotFound(ref)
    return conv


_SHOWN_OWNERS = 5


def conversation_names(store: Any, user_id: str, ids: Iterable[str | None]) -> dict[str, str]:
    """id -> the name ``user_id`` knows it by (:attr:`Conversation.name`), for those of ``ids``
    that are conversations of that user (a deleted one, or another user's, is left out): what a
    fact's ``source_conversation`` shows the user. One lookup per distinct id."""
    names: dict[str, str] = {}
    for cid in {i for i in ids if i}:
        conv = store.find_conversation(cid)
        if conv is not None and conv.user_id == user_id:
            names[cid] = conv.name
    return names


def new_id(prefix: str = "c") -> str:
    """A short random id, readable in a terminal (``c_3f9a1b2c4d5e``)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Conversation(BaseModel):
    """A conversation's record. Its messages live in the log, not here.

    Its strings follow the text rules (colloquy.text) however it is built, stored rows and
    imported files included: a blank title reads as None (untitled), a blank persona as ""
    (none), a blank model as "" (none: a resumed session uses the default model, where a blank
    name would fail it), a blank name as no name (the id)."""

    model_config = ConfigDict(frozen=True)
    id: Text
    user_id: Text | None = None
    title: Annotated[str | None, AfterValidator(clean_title)] = None
    #: The system prompt, stored so a resumed session keeps its persona byte for byte.
    persona: Annotated[str, AfterValidator(clean_persona)] = ""
    #: The model as get_model() rebuilds it, provider prefix included (``ollama:llama3``).
    model: Annotated[str, AfterValidator(clean_or_empty)] = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    #: Sequence number of the newest message (0 when empty); the next append takes last_seq + 1.
    last_seq: int = 0
    meta: JSONDict = Field(default_factory=dict)
    #: What the conversation is called in its user's namespace, unique per user: the id the
    #: service and the CLI show (``/v1/conversations/{name}``, an OpenAI client's conversation
    #: name). The same name for two users is two conversations, each with an ``id`` of its own.
    #: Defaults to the id (a conversation created by ``Chat(session_id=...)``).
    name: Text = ""
    #: Set when the record is created: a conversation deleted and created anew under the same
    #: id has another generation, so a cached view (or a write) of the old one is told apart.
    generation: str = Field(default_factory=new_generation)

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("id"):
            name = data.get("name")
            if not name or (isinstance(name, str) and is_blank(name)):
                data = {**data, "name": data["id"]}
        return data


class LogRead(BaseModel):
    """What :meth:`Store.read_log` returns: the conversation's generation and last_seq read in
    the same query (one snapshot) as the messages after ``after_seq``."""

    model_config = ConfigDict(frozen=True)
    generation: str
    last_seq: int
    messages: list[StoredMessage]


class NewMessage(BaseModel):
    """A message about to be appended, with what is known about it."""

    model_config = ConfigDict(frozen=True)
    message: Message
    usage: Usage | None = None
    model: Text | None = None
    cost_usd: float | None = None
    meta: JSONDict = Field(default_factory=dict)


@runtime_checkable
class Store(MemoryRecordStore, Protocol):
    """The persistence interface. Implementations: MemoryStore, SQLiteStore (and PostgreSQL).

    Derived memory records (summaries, facts, cursors) come from :class:`MemoryRecordStore`.

    Every method is atomic. :meth:`append` is the only way messages are written.
    """

    def create_conversation(
        self,
        *,
        id: str | None = None,
        user_id: str | None = None,
        persona: str = "",
        model: str = "",
        title: str | None = None,
        meta: dict[str, Any] | None = None,
        name: str | None = None,
        owner: Owner | None = None,
    ) -> Conversation:
        """A new conversation (its id taken: :class:`StoreError`). ``owner``: the user it is
        created for must still exist (see store/owner.py)."""
        ...

    def get_conversation(self, conversation_id: str) -> Conversation:
        """The conversation, or :class:`ConversationNotFound`."""
        ...

    def find_conversation(self, conversation_id: str) -> Conversation | None: ...

    def existing_conversations(self, ids: Collection[str]) -> set[str]:
        """Those of ``ids`` that still have a record, in one query: how a process learns of
        deletions made by others (colloquy.caches.sweep_deleted)."""
        ...

    def find_named(self, user_id: str, name: str) -> Conversation | None:
        """The conversation ``user_id`` calls ``name`` (see :attr:`Conversation.name`)."""
        ...

    def list_named(self, name: str, limit: int = 100) -> list[Conversation]:
        """Every user's conversations called ``name``, newest activity first: for an operator's
        tools (the CLI), never for a user's request (a user sees only their own names)."""
        ...

    def list_conversations(
        self, user_id: str | None = None, limit: int = 100
    ) -> list[Conversation]:
        """Newest activity first; all users' when ``user_id`` is None."""
        ...

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        persona: str | None = None,
        model: str | None = None,
        meta: dict[str, Any] | None = None,
        owner: Owner | None = None,
        untitled_only: bool = False,
    ) -> Conversation:
        """Change the given fields; with ``owner`` (e.g. the generation a title was computed
        for) only if it still exists, else :class:`OwnerGone`. With ``untitled_only`` (how an
        automatic title is written) change nothing when the conversation has a title already,
        and return the record as it is: the condition is part of the write, so a rename by
        another process while the title model ran is never overwritten."""
        ...

    def delete_conversation(self, conversation_id: str) -> None:
        """Remove the conversation and every message of it (writes in flight on its behalf
        are refused from then on: see store/owner.py)."""
        ...

    def append(
        self,
        conversation_id: str,
        messages: Sequence[NewMessage],
        *,
        expected_seq: int | None = None,
        owner: Owner | None = None,
        fence: str | None = None,
    ) -> list[StoredMessage]:
        """Append messages in one transaction, numbered from last_seq + 1.

        With ``expected_seq`` (the conversation's last_seq as the caller last saw it), raise
        :class:`ConflictError` if another writer appended in between, instead of interleaving.
        With ``owner``, raise :class:`OwnerGone` if the conversation was replaced meanwhile.
        With ``fence`` (the token the turn wrote with ``claim_turn``), raise
        :class:`TurnLockLost` if another turn claimed the conversation since (store/locks.py).
        """
        ...

    def read_log(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = None
    ) -> LogRead | None:
        """The messages with seq > after_seq (at most ``limit``) together with the
        conversation's generation and last_seq, in one query; None when there is no such
        conversation. How a cached view checks, at no extra cost, that the conversation it
        holds was not deleted or replaced by another process."""
        ...

    def load(
        self, conversation_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredMessage]:
        """Messages with seq > after_seq, oldest first (at most ``limit``, the oldest ones)."""
        ...

    def close(self) -> None: ...


class StoreBase:
    """What every back end shares of the Store contract: argument handling and errors are
    written here once; a back end supplies the three storage steps (``_insert_conversation``,
    ``_update_conversation``, ``_delete_conversation``) and ``find_conversation``."""

    #: Whether every call runs in this process without waiting on a network (SQLite, memory;
    #: not PostgreSQL): the service may then run a turn's steps on its event loop
    #: (colloquy.server.service.steps_stay_local). A SQLite write may still wait for another
    #: process's write transaction (``busy_timeout``): colloquy's own take well under a
    #: millisecond.
    in_process: ClassVar[bool] = False

    def find_conversation(self, conversation_id: str) -> Conversation | None:  # pragma: no cover
        raise NotImplementedError

    def _insert_conversation(self, conv: Conversation, owner: Owner | None) -> bool:  # pragma: no cover
        """Store a new record; False when the id is taken (nothing is changed then)."""
        raise NotImplementedError

    def _update_conversation(
        self, conversation_id: str, changes: dict[str, Any], now: float, owner: Owner | None,
        untitled_only: bool = False,
    ) -> Conversation | None:  # pragma: no cover
        """Apply ``changes`` (column -> value) and ``updated_at = now``; None if not found.
        With ``untitled_only``, only while the title is unset (else the record unchanged)."""
        raise NotImplementedError

    def _delete_conversation(self, conversation_id: str) -> bool:  # pragma: no cover
        """Remove the record, its log and its derived records; False if not found."""
        raise NotImplementedError

    def _erase_deleted(self) -> None:
        """Called after a deletion that promises "for good" (a conversation, facts) committed:
        make the deleted bytes unrecoverable from the store's files where that is cheap (SQLite:
        truncate the write-ahead log, which still holds the rows' old page images). Nothing to do
        in memory; on PostgreSQL dead tuples stay until a table rewrite (README, Deletion)."""

    def _append(
        self, conversation_id: str, messages: Sequence[NewMessage], expected_seq: int | None,
        now: float, owner: Owner | None, fence: str | None = None,
    ) -> list[StoredMessage]:  # pragma: no cover
        """Append in one transaction (see :meth:`Store.append`), stamped ``now``."""
        raise NotImplementedError

    def create_conversation(
        self,
        *,
        id: str | None = None,
        user_id: str | None = None,
        persona: str = "",
        model: str = "",
        title: str | None = None,
        meta: dict[str, Any] | None = None,
        name: str | None = None,
        owner: Owner | None = None,
    ) -> Conversation:
        """A new conversation; ``name`` (default: the id) must be free among ``user_id``'s
        conversations, and the id free among all. :class:`StoreError` otherwise."""
        # The text rules (colloquy.text): a blank title or owner is refused (a blank user id
        # would own a conversation no one can name); the record cleans the rest.
        title = None if title is None else require_text(title, "the title")
        user_id = None if user_id is None else require_text(user_id, "the user id")
        # A name (default: the id) is what the service's paths carry: one they cannot carry
        # would make a conversation no client can open again.
        if name is not None and is_blank(name):
            name = None  # none: the id
        if name or id:
            require_name(name or id or "")
        conv = Conversation(
            id=id or new_id(), user_id=user_id, persona=persona, model=model, title=title,
            meta=copy.deepcopy(meta) if meta else {},  # the caller may reuse its dict
            name=name or "",
        )
        if not self._insert_conversation(conv, owner):
            taken = f"user {user_id!r} already has a conversation named {conv.name!r}" \
                if user_id is not None and self.find_named(user_id, conv.name) is not None \
                else f"conversation {conv.id!r} already exists"
            raise StoreError(taken)
        return conv

    def find_named(self, user_id: str, name: str) -> Conversation | None:  # pragma: no cover
        raise NotImplementedError

    def get_conversation(self, conversation_id: str) -> Conversation:
        conv = self.find_conversation(conversation_id)
        if conv is None:
            raise ConversationNotFound(conversation_id)
        return conv

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        persona: str | None = None,
        model: str | None = None,
        meta: dict[str, Any] | None = None,
        owner: Owner | None = None,
        untitled_only: bool = False,
    ) -> Conversation:
        # The text rules, as the record would apply them: back ends write these values as given.
        changes: dict[str, Any] = {
            k: v for k, v in (
                ("title", None if title is None else require_text(title, "the title")),
                ("persona", None if persona is None else clean_persona(persona)),
                ("model", None if model is None else clean_or_empty(model)),
                ("meta", None if meta is None else clean_json(copy.deepcopy(meta))),
            ) if v is not None
        }
        conv = self._update_conversation(conversation_id, changes, time.time(), owner,
                                         untitled_only)
        if conv is None:
            raise ConversationNotFound(conversation_id)
        return conv

    def delete_conversation(self, conversation_id: str) -> None:
        if not self._delete_conversation(conversation_id):
            raise ConversationNotFound(conversation_id)
        forget_cached([conversation_id], self)
        self._erase_deleted()

    def append(
        self,
        conversation_id: str,
        messages: Sequence[NewMessage],
        *,
        expected_seq: int | None = None,
        owner: Owner | None = None,
        fence: str | None = None,
    ) -> list[StoredMessage]:
        return self._append(conversation_id, messages, expected_seq, time.time(), owner, fence)


__all__ = [
    "Conversation",
    "LogRead",
    "NewMessage",
    "Store",
    "StoreBase",
    "forget_cached",
    "new_id",
    "register_cache",
]
