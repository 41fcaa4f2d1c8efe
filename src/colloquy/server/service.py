"""What the routes call: ownership checks, and turns through :class:`colloquy.Chat`.

The routes parse and serialise; this module decides *whose* conversation a request may touch and
hands every turn to :class:`Chat`, which owns the one flow (store the message, build the context,
call the model, store the reply). No prompt is assembled and no SQL is written here either:
persistence goes through the store's methods.

Ownership: a conversation that does not exist and a conversation of another user raise the same
:class:`ConversationNotFound`, so a caller cannot even learn that someone else's id exists.

Turns on one conversation are serialised within the process by an asyncio lock (two browser
tabs sending at once take turns instead of interleaving); across processes the store's own
append semantics apply.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..chat import Chat, Reply
from ..context.base import ContextPolicy
from ..errors import ConversationNotFound, StoreError
from ..messages import StoredMessage
from ..models import Model, get_model
from ..store import Conversation, Store
from ..store.users import User
from ..usage import Usage
from .errors import Busy, InvalidRequest, PayloadTooLarge, Redactor
from .ratelimit import RateLimit

#: How far back an idempotency key is looked for (messages), so a lookup stays O(1) in the
#: conversation's length.
IDEMPOTENCY_WINDOW = 200
_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@dataclass
class ServerSettings:
    """How the service behaves. Every field has a safe default; ``colloquy serve`` sets them
    from flags and the environment."""

    #: The default model: a name (``echo``, ``claude-sonnet-4-6``, ``ollama:llama3``) or a Model.
    model: Model | str | None = None
    #: Other model names a conversation may ask for (the default is always allowed).
    allowed_models: Sequence[str] = ()
    #: The persona of conversations created without one.
    system: str = ""
    policy: ContextPolicy | None = None
    max_tokens: int = 1024
    #: Per-user request rate; None disables the limit.
    rate_limit: RateLimit | None = field(default_factory=lambda: RateLimit(requests=120, per=60.0))
    #: Longest accepted user message, in characters.
    max_message_chars: int = 32_000
    #: Largest accepted request body, in bytes.
    max_body_bytes: int = 256 * 1024


class ChatService:
    """The service's logic, independent of HTTP (so it is testable and reusable)."""

    def __init__(self, store: Store, settings: ServerSettings, redactor: Redactor) -> None:
        self.store = store
        self.settings = settings
        self.redactor = redactor
        default = settings.model if isinstance(settings.model, Model) else get_model(settings.model)
        self.default_model = default
        self._models: dict[str, Model] = {default.name: default}
        if isinstance(settings.model, str):
            self._models[settings.model] = default
        for name in settings.allowed_models:
            self._models.setdefault(name, get_model(name))
        for m in self._models.values():
            self.redactor.add(getattr(m, "_secret", None), getattr(m, "_api_key", None))
        self._locks: dict[str, asyncio.Lock] = {}

    # -- models ---------------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    def model_for(self, name: str | None) -> Model:
        """The model a conversation asked for; the default when it names none (or one the
        server no longer allows, e.g. a conversation created from the CLI)."""
        if not name:
            return self.default_model
        return self._models.get(name, self.default_model)

    def check_model(self, name: str | None) -> Model:
        if name is None:
            return self.default_model
        if name not in self._models:
            raise InvalidRequest(
                f"model {name!r} is not offered by this server; choose one of {self.model_names}"
            )
        return self._models[name]

    # -- conversations --------------------------------------------------------------------------

    def owned(self, user: User, conversation_id: str) -> Conversation:
        conv = self.store.find_conversation(conversation_id)
        if conv is None or conv.user_id != user.id:
            raise ConversationNotFound(conversation_id)
        return conv

    def create(
        self, user: User, *, title: str | None = None, system: str | None = None,
        model: str | None = None, id: str | None = None,
    ) -> Conversation:
        m = self.check_model(model)
        return self.store.create_conversation(
            id=id, user_id=user.id, persona=self.settings.system if system is None else system,
            model=m.name, title=title,
        )

    def list(self, user: User, limit: int = 100) -> list[Conversation]:
        return self.store.list_conversations(user_id=user.id, limit=limit)

    def detail(self, user: User, conversation_id: str) -> tuple[Conversation, list[StoredMessage]]:
        conv = self.owned(user, conversation_id)
        return conv, self.store.load(conversation_id)

    def rename(self, user: User, conversation_id: str, title: str) -> Conversation:
        self.owned(user, conversation_id)
        return self.store.update_conversation(conversation_id, title=title)

    def delete(self, user: User, conversation_id: str) -> None:
        self.owned(user, conversation_id)
        self.store.delete_conversation(conversation_id)

    # -- turns ----------------------------------------------------------------------------------

    def chat(self, user: User, conversation_id: str, *, temperature: float | None = None,
             max_tokens: int | None = None) -> Chat:
        conv = self.owned(user, conversation_id)
        return Chat(
            self.model_for(conv.model), store=self.store, session_id=conv.id, user_id=user.id,
            policy=self.settings.policy, temperature=temperature,
            max_tokens=max_tokens or self.settings.max_tokens,
        )

    def check_content(self, content: str) -> str:
        if not content.strip():
            raise InvalidRequest("the message is empty")
        limit = self.settings.max_message_chars
        if len(content) > limit:
            raise PayloadTooLarge(f"the message is {len(content)} characters; the limit is {limit}")
        return content

    def _lock(self, conversation_id: str) -> asyncio.Lock:
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = asyncio.Lock()
        return lock

    def _after_turn(self, conversation_id: str, content: str) -> None:
        """Give an untitled conversation the first words of its first message as a title."""
        conv = self.store.find_conversation(conversation_id)
        if conv is not None and conv.title is None:
            words = " ".join(content.split())
            title = words if len(words) <= 60 else words[:59].rstrip() + "…"
            self.store.update_conversation(conversation_id, title=title)

    async def send(self, chat: Chat, content: str, key: str | None = None) -> tuple[Reply, bool]:
        """One turn; returns the reply and whether it was replayed from an earlier request."""
        async with self._lock(chat.session_id):
            replay = await asyncio.to_thread(self.replay, chat.session_id, key)
            if replay is not None:
                return replay, True
            reply = await chat.asend(self._input(chat, content, key))
            await asyncio.to_thread(self._after_turn, chat.session_id, content)
            return reply, False

    async def stream(self, chat: Chat, content: str, key: str | None = None
                     ) -> AsyncIterator[str | tuple[Reply, bool]]:
        """Text deltas, then ``(reply, replayed)``."""
        async with self._lock(chat.session_id):
            replay = await asyncio.to_thread(self.replay, chat.session_id, key)
            if replay is not None:
                if replay.text:
                    yield replay.text
                yield replay, True
                return
            async for event in chat.astream(self._input(chat, content, key)):
                if isinstance(event, str):
                    if event:
                        yield event
                else:
                    await asyncio.to_thread(self._after_turn, chat.session_id, content)
                    yield event, False

    def _input(self, chat: Chat, content: str, key: str | None) -> Any:
        return content

    def replay(self, conversation_id: str, key: str | None) -> Reply | None:
        """The stored answer to an earlier request with this idempotency key, if any.

        Raises :class:`Busy` when the keyed message is stored but has no answer (the first
        request is still running, or its model call failed): the caller retries later, or with
        a new key to send again.
        """
        if key is None:
            return None
        conv = self.store.get_conversation(conversation_id)
        log = self.store.load(conversation_id, after_seq=max(0, conv.last_seq - IDEMPOTENCY_WINDOW))
        for i, sm in enumerate(log):
            if sm.role == "user" and sm.meta.get("idempotency_key") == key:
                return self._reply_after(conv, log, i, key)
        return None

    def _reply_after(self, conv: Conversation, log: list[StoredMessage], i: int, key: str) -> Reply:
        turn: list[StoredMessage] = []
        for sm in log[i + 1:]:
            if sm.message.starts_turn:
                break
            turn.append(sm)
        answers = [sm for sm in turn if sm.role == "assistant"]
        if not answers or answers[-1].message.tool_uses:
            raise Busy(
                f"a message with idempotency key {key!r} is stored but not answered yet (still "
                "running, or its model call failed); retry later, or send with a new key"
            )
        final = answers[-1]
        costs = [sm.cost_usd for sm in answers]
        return Reply(
            text=final.message.text, message=final.message, conversation_id=conv.id,
            seq=final.seq, usage=Usage.total(sm.usage for sm in answers),
            cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
            model=final.model or conv.model, stop_reason=final.meta.get("stop_reason"),
            rounds=len(answers),
        )

    # -- context --------------------------------------------------------------------------------

    def context(self, user: User, conversation_id: str, message: str | None = None
                ) -> tuple[dict[str, Any], int]:
        chat = self.chat(user, conversation_id)
        conv = self.store.get_conversation(conversation_id)
        if message is None and conv.last_seq == 0:
            raise InvalidRequest(
                "the conversation is empty: pass ?message=TEXT to see the request a first "
                "message would make"
            )
        request = chat.next_request(message)
        return request.to_anthropic(), chat.count_tokens(request)

    # -- OpenAI-compatible ------------------------------------------------------------------------

    def conversation_for_openai(self, user: User, conversation_id: str, system: str | None,
                                model: str | None) -> Conversation:
        """The caller's conversation with this id, created on first use (with the client's
        system message as its persona)."""
        if not _CONVERSATION_ID.match(conversation_id):
            raise InvalidRequest(
                "conversation ids are 1-128 characters: letters, digits, '_', '.', ':', '@', '-'"
            )
        conv = self.store.find_conversation(conversation_id)
        if conv is not None:
            if conv.user_id != user.id:
                raise ConversationNotFound(conversation_id)
            return conv
        name = model if model in self._models else None
        try:
            return self.create(user, system=system, model=name, id=conversation_id)
        except StoreError:
            # Created concurrently by another request: re-check whose it is.
            return self.owned(user, conversation_id)

