"""What the routes call: ownership checks, and turns through :class:`colloquy.Chat`.

The routes parse and serialise; this module decides *whose* conversation a request may touch and
hands every turn to :class:`Chat`, which owns the one flow (store the message, build the context,
call the model, store the reply). No prompt is assembled and no SQL is written here either:
persistence goes through the store's methods.

Names, not ids: a conversation is addressed by its *name* in the caller's own namespace
(:attr:`Conversation.name`, unique per user), on every route: ``/v1/conversations/{name}`` and
the OpenAI-compatible route's conversation alike. The same name for two users is two
conversations, so another user's name and a free name answer the same way (404 where nothing is
created, a conversation of the caller's own where the route creates one): nobody can probe
which names exist or squat a name someone else will use. Conversations created here get a
random internal id (never the name), so no answer depends on what other users hold. The store
and :class:`Chat` keep working with ids; :meth:`ChatService.owned` is the one place a name
becomes an id.

Turns on one conversation are serialised by Chat's turn lock (across processes too); an
asyncio lock per conversation queues them inside the process first, so waiting turns do not
each hold a worker thread. A turn waiting on the model holds no thread either (the async API,
colloquy.effects); how many turns a worker holds is bounded by ``max_inflight`` (see
colloquy.server.inflight).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..branches import Revision
from ..chat import Chat, Reply, UserInput
from ..context.seen import SeenContext, seen
from ..continuity import find_keyed
from ..context.base import ContextPolicy
from ..effects import Turn, arun
from ..memory.extract import FactExtraction
from ..memory.records import Fact
from ..errors import ConfigError, ConversationNotFound, InvalidTextError, StoreError
from ..messages import Message, StoredMessage, TextBlock
from ..models import Model, ThinkingDelta, ToolChoice, ToolSpec, get_model, model_spec
from ..rights import DeleteReport, delete_user, export_user
from ..store import Conversation, MemoryStore, NewMessage, Store, new_id
from ..store.base import conversation_names, register_cache
from ..store.memory_records import FactNotFound
from ..store.owner import Owner
from ..store.users import User
from ..text import clean, require_text
from ..turn_options import TurnOptions
from .errors import InvalidRequest, ModelNotFound, PayloadTooLarge, Redactor
from ..usage import Usage
from .coalesce import coalesced
from .inflight import InFlight, Ticket, default_max_inflight
from .metrics import record_steps
from .ratelimit import RateLimit
from .schemas import IDEMPOTENCY_HEADER
from .steps import STEPS, LoopLag, StepPool
from .sweep import SWEEP_INTERVAL, Sweeper

T = TypeVar("T")
#: The note Chat puts on a reply that answers an idempotency key seen before.
REPLAYED_NOTE = "replayed"
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
    #: A ContextPolicy, or a policy name as ``colloquy serve --policy`` takes (``memory``,
    #: ``facts``...; built with the same presets, with their fact extraction unless
    #: ``extract_facts`` is given). Anything else is refused when the service is built.
    policy: ContextPolicy | str | None = None
    #: Fact extraction after turns (colloquy.memory); None: off.
    extract_facts: FactExtraction | None = None
    max_tokens: int = 1024
    #: Extended thinking for every turn: a budget in tokens (None: off); a request may ask for
    #: its own (0: none).
    thinking: int | None = None
    #: Input/output guards for every turn (colloquy.guards); a blocked turn is answered with
    #: the guard's message and ``blocked: true``.
    guards: Sequence[Any] = ()
    #: Per-user request rate; None disables the limit.
    rate_limit: RateLimit | None = field(default_factory=lambda: RateLimit(requests=120, per=60.0))
    #: Longest accepted user message, in characters.
    max_message_chars: int = 32_000
    #: Largest accepted request body, in bytes.
    max_body_bytes: int = 256 * 1024
    #: Most threads for the turns' short steps (store transactions, the context policy, guards
    #: and side calls of models without an async client): two while the steps compute, more
    #: only while they wait (colloquy.server.steps). A turn waiting on the model holds none,
    #: so this does not bound the turns in flight; ``max_inflight`` does.
    threads: int = 16
    #: Turns one worker holds in flight; past it a turn is answered 503 with Retry-After at
    #: once. The default is sized by memory (colloquy.server.inflight.default_max_inflight).
    max_inflight: int = field(default_factory=default_max_inflight)
    #: Conversations whose Chat (and loaded log) stays in memory between requests, least
    #: recently used dropped first: a new Chat per request would reload the whole log, making
    #: each turn cost more than the last (850 ms per turn at 10,000 turns against 14 ms,
    #: bench/service.py). Sized for the users a worker serves at once: with fewer Chats than
    #: users taking turns in a round, least-recently-used drops every one of them before its
    #: next turn (400 users: a second turn cost 3.1 ms of CPU instead of 1.9, bench/load.py).
    cached_chats: int = 4096
    #: ...and at most this many messages held by those Chats together (checked when a Chat is
    #: added), so that long conversations cannot make the cache large.
    cached_messages: int = 200_000
    #: Seconds between sweeps that drop from this worker's caches the conversations deleted
    #: by another process (``users delete``, another worker, ``purge``): the bound on how long
    #: a deleted user's messages stay in its memory; one query per sweep, none per turn
    #: (colloquy.server.sweep). 0: no sweep.
    sweep_interval: float = SWEEP_INTERVAL
    #: Record Prometheus series in this process (colloquy.server.metrics).
    metrics: bool = False
    #: Serve ``GET /metrics`` on the app itself, to ``Authorization: Bearer <this token>``
    #: (implies ``metrics``); None: no route (``colloquy serve --metrics PORT`` serves the
    #: series on a port of its own instead).
    metrics_token: str | None = None
    #: Answer a JSON turn and a new conversation by the hot routes (colloquy.server.hot), which
    #: skip FastAPI's per-request solving and give the same answers; False: every request goes
    #: through its FastAPI route (the tests compare the two).
    hot_routes: bool = True
    #: Where a turn's steps (colloquy.effects) run: ``"auto"``: on the event loop when the
    #: store never waits on a network (:func:`steps_stay_local`: SQLite, memory), each turn
    #: moving to the step threads from the point its own steps may wait (a guard, fact
    #: extraction, a title or a policy calling a model: Chat's MayWait); ``"threads"``:
    #: always on the step threads.
    steps: str = "auto"


@dataclass(frozen=True)
class Caller:
    """A request's caller not looked up yet: its bearer token and the lookup (blocking: a store
    read, the rate limit), so that a route can authenticate in the first step of its work on
    the step pool instead of in a trip of its own (colloquy.server.hot). The lookup raises
    NotAuthenticated for a bad token."""

    token: str
    lookup: Callable[[str], User]

    def user(self) -> User:
        return self.lookup(self.token)


class ChatService:
    """The service's logic, independent of HTTP (so it is testable and reusable)."""

    def __init__(self, store: Store, settings: ServerSettings, redactor: Redactor) -> None:
        self.store = store
        self.redactor = redactor
        default = settings.model if isinstance(settings.model, Model) else get_model(settings.model)
        self.settings = settings = _resolve_policy(settings, default)
        assert not isinstance(settings.policy, str)
        #: The context policy of every conversation (None: Chat's default).
        self.policy: ContextPolicy | None = settings.policy
        self.default_model = default
        self._models: dict[str, Model] = {default.name: default}
        if isinstance(settings.model, str):
            self._models[settings.model] = default
        for name in settings.allowed_models:
            self._models.setdefault(name, get_model(name))
        for m in list(self._models.values()):  # conversations store the prefixed name
            self._models.setdefault(model_spec(m), m)
        for m in self._models.values():
            self.redactor.add(getattr(m, "_secret", None), getattr(m, "_api_key", None))
            m.cost(Usage(input_tokens=1))  # loads the price data now (about a second), not in a first turn
        #: Per-conversation turn queues in this process: (lock, number of users of it); an
        #: entry is dropped when its last user leaves, so the map stays as small as the set of
        #: conversations with a turn in progress.
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}
        if settings.threads < 1:
            raise ValueError(f"threads must be at least 1, not {settings.threads}")
        #: The turns' steps' threads (see ServerSettings.threads); idle threads cost nothing.
        self.executor = StepPool(settings.threads)
        if settings.steps not in STEPS:
            raise ConfigError(f"steps must be one of {', '.join(STEPS)}, not {settings.steps!r}")
        #: Whether turns' steps (and :meth:`run`'s calls) run on the event loop itself
        #: (ServerSettings.steps, :func:`steps_stay_local`).
        self.inline_steps = settings.steps == "auto" and steps_stay_local(store)
        #: Whether the loop runs behind: then turns' steps go to the threads (LoopLag).
        self.lag = LoopLag()
        #: Turns in flight, against ServerSettings.max_inflight (503 past it).
        self.inflight = InFlight(settings.max_inflight)
        self._chats: OrderedDict[str, Chat] = OrderedDict()
        self._chats_lock = threading.Lock()
        # A deleted conversation's Chat (and log) is dropped at once; the models' records of
        # requests (offline models) too. Registered with this store only (colloquy.caches).
        for cache in (self, *self._models.values()):
            if hasattr(cache, "forget_conversations"):
                register_cache(cache, store)
        #: ...and one deleted by another process within ``sweep_interval`` seconds (on the
        #: threads: a sweep that finds deletions runs a full garbage collection).
        self.sweeper = Sweeper(store, settings.sweep_interval, self.on_threads)

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

    def owned(self, user: User, name: str) -> Conversation:
        """The caller's conversation called ``name``: :class:`ConversationNotFound` when they
        have none, whoever else has one."""
        # Names from paths and headers follow the text rules (a %00 must not reach PostgreSQL).
        conv = self.store.find_named(user.id, clean(name))
        if conv is None:
            raise ConversationNotFound(name, client_name=name)
        return conv

    def create(
        self, user: User | Caller, *, title: str | None = None, system: str | None = None,
        model: str | None = None, name: str | None = None,
    ) -> Conversation:
        """A new conversation of the caller, with a random id; named ``name`` (default: that
        id). :class:`StoreError` when the caller already has that name. A :class:`Caller` is
        authenticated first."""
        if isinstance(user, Caller):
            user = user.user()
        m = self.check_model(model)
        return self.store.create_conversation(
            id=new_id(), name=name, user_id=user.id,
            persona=self.settings.system if system is None else system, model=model_spec(m),
            title=title, owner=_owner(user),
        )

    def conversations(self, user: User, limit: int = 100) -> list[Conversation]:
        return self.store.list_conversations(user_id=user.id, limit=limit)

    def detail(self, user: User, name: str) -> tuple[Conversation, list[StoredMessage]]:
        conv = self.owned(user, name)
        return conv, self.store.load(conv.id)

    def rename(self, user: User, name: str, title: str) -> Conversation:
        return self.store.update_conversation(self.owned(user, name).id, title=title)

    def delete(self, user: User, name: str) -> None:
        self.store.delete_conversation(self.owned(user, name).id)

    # -- turns ----------------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` where a turn's steps run (a short store call: a token's lookup, a new
        conversation): on the step threads, so that a store round trip never blocks the loop,
        or at once when the steps run inline (:attr:`inline_steps`)."""
        if self._inline():
            return fn(*args)
        return await self.on_threads(fn, *args)

    def _inline(self) -> bool:
        """Whether work starting now runs on the loop: :attr:`inline_steps`, while the loop
        keeps up (:class:`LoopLag`)."""
        return self.inline_steps and not self.lag.watch()

    def _turn_inline(self) -> bool:
        """:meth:`_inline` for a turn, counted by placement (``colloquy_turn_steps_total``)."""
        inline = self._inline()
        record_steps("loop" if inline else "behind" if self.inline_steps else "threads")
        return inline

    async def on_threads(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the step threads whatever :attr:`inline_steps`: for work outside a
        turn that may wait (a context built for ``count_tokens``: a policy may call a model or
        the encoder, and no MayWait says so; a sweep's garbage collection)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def chat(self, user: User, name: str) -> Chat:
        """The conversation's Chat, kept between requests so that a turn reads only what is
        new in the log (``Chat._sync``), from this process or any other. The name is resolved
        (and so ownership checked) against the store on every call."""
        conv = self.owned(user, name)
        model = self.model_for(conv.model)
        with self._chats_lock:
            chat = self._chats.get(conv.id)
            # The generation read by owned() tells a conversation deleted and created anew by
            # another process from the one this Chat holds: then the Chat is rebuilt.
            if chat is not None and chat.model is model and chat.user_id == user.id \
                    and chat.generation == conv.generation:
                self._chats.move_to_end(conv.id)
                return chat
        chat = Chat(
            model, store=self.store, session_id=conv.id, user_id=user.id,
            policy=self.policy, max_tokens=self.settings.max_tokens,
            extract_facts=self.settings.extract_facts, guards=self.settings.guards,
            executor=self.executor, create_missing=False, thinking=self.settings.thinking,
        )
        with self._chats_lock:
            self._chats[conv.id] = chat
            while len(self._chats) > max(0, self.settings.cached_chats):
                self._chats.popitem(last=False)
            held = sum(len(c._log) for c in self._chats.values())
            while held > self.settings.cached_messages and len(self._chats) > 1:
                _, dropped = self._chats.popitem(last=False)
                held -= len(dropped._log)
        return chat

    async def turn_chat(self, user: User, name: str, content: UserInput | None, key: str | None,
                        revise: Revision | None = None, target: int | None = None,
                        ) -> tuple[Chat, bool]:
        """What a streamed turn calls before its stream starts: the message's size, the caller's
        conversation, the idempotency key (a key already used with another message is refused
        here, with a status, before a stream starts), and for an edit or a regeneration that
        there is a turn to revise, the one ``target`` names (409 now rather than an error event in
        the stream). ``content`` is None for a regeneration. Returns the Chat and whether the key was
        already answered: the turn will replay, which the stream's headers say
        (``Idempotent-Replayed``) before its first event."""
        if content is not None:
            self.check_message(content)
        return await self.run(self.prepare_stream, user, name, content, key, revise,
                              target)

    def prepare_turn(self, user: User, name: str, content: UserInput | None, key: str | None,
                     revise: Revision | None = None, target: int | None = None,
                     api: str | None = None) -> Chat:
        """The caller's conversation, the idempotency key's check and the revision's, once the
        caller is known (blocking: store reads). ``api``: the compatible API the turn came
        through (TurnOptions.api), part of the key's fingerprint."""
        chat = self.chat(user, name)
        if key is not None:
            chat.check_idempotency_key(content, key, revise, target, api)
        chat.check_target(revise, target, key)
        return chat

    def prepare_stream(self, user: User, name: str, content: UserInput | None, key: str | None,
                       revise: Revision | None = None, target: int | None = None,
                       api: str | None = None) -> tuple[Chat, bool]:
        """:meth:`prepare_turn`, and whether the key was already answered (see
        :meth:`turn_chat`)."""
        chat = self.prepare_turn(user, name, content, key, revise, target, api)
        return chat, chat.idempotency_key_answered(content, key, revise, target, api)

    def cached_conversations(self) -> set[str]:
        """The conversations whose Chat is cached here (see colloquy.caches.sweep_deleted)."""
        with self._chats_lock:
            return set(self._chats)

    def forget_conversations(self, ids: set[str]) -> None:
        """Deleted conversations: drop their Chat and its loaded log (see register_cache)."""
        with self._chats_lock:
            for cid in ids:
                self._chats.pop(cid, None)

    def check_message(self, content: UserInput) -> None:
        """A turn's new message: not empty, and its text within ``max_message_chars`` (a
        message of blocks counts the text of its text blocks; tool results and images are
        bounded by the request's size)."""
        if isinstance(content, str):
            self.check_content(content)
            return
        blocks = content.content if isinstance(content, Message) else list(content)
        if not blocks:  # the same error as an empty string: one status (422) for one kind
            raise InvalidTextError("the message is empty")
        texts = [b.text for b in blocks if isinstance(b, TextBlock)]
        # Text alone must say something; beside an image or a tool result it may be blank.
        self.check_content("\n\n".join(texts) if len(texts) == len(blocks) else "\n\n".join(
            texts) or "-")

    def check_content(self, content: str) -> str:
        content = require_text(content, "the message")  # the text rules, before the size
        limit = self.settings.max_message_chars
        if len(content) > limit:
            raise PayloadTooLarge(f"the message is {len(content)} characters; the limit is {limit}")
        return content

    @staticmethod
    def idempotency_key(header: str | None, body: str | None = None) -> str | None:
        """The request's idempotency key, from the ``Idempotency-Key`` header or the body (the
        same key in both is fine; two different keys are refused)."""
        if header is not None and body is not None and header != body:
            raise InvalidRequest(
                f"the {IDEMPOTENCY_HEADER} header and the body's idempotency_key differ: send one")
        return header if header is not None else body

    @contextlib.asynccontextmanager
    async def _turn(self, conversation_id: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(conversation_id, (asyncio.Lock(), 0))
        self._locks[conversation_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[conversation_id]
            if users <= 1:
                del self._locks[conversation_id]
            else:
                self._locks[conversation_id] = (lock, users - 1)

    async def send_named(self, user: User | Caller, name: str, content: str | None,
                         key: str | None = None, *, revise: Revision | None = None,
                         thinking: int | None = None, target: int | None = None,
                         ) -> tuple[Reply, bool]:
        """:meth:`turn_chat` then :meth:`send`, with the caller's conversation resolved (and
        the idempotency key checked) in the turn's first step on the pool rather than in a trip
        of its own; a :class:`Caller` (a token not yet looked up) is authenticated in that step
        too: a JSON turn makes two trips to a thread, not four (issue 16's CPU per turn).
        Raises what they raise. Turns are queued here by (user or token, name), which names one
        conversation; a turn on the same conversation queued otherwise (by id: a stream) waits
        for the store's turn lock instead (colloquy.effects). ``revise``: as for :meth:`send`;
        ``thinking``: Chat.send's, this turn only; ``target``: Chat.send's."""
        if content is not None and not isinstance(user, Caller):
            self.check_content(content)
        options = TurnOptions.of(thinking=thinking)

        def turn() -> Turn:  # its first step runs on the pool: store reads may wait there
            if isinstance(user, Caller):
                caller = user.user()
                if content is not None:  # after the token, as the routes: 401 before 413
                    self.check_content(content)
            else:
                caller = user
            chat = self.prepare_turn(caller, name, content, key, revise, target)
            return (yield from chat._turn(content, False, key, options, revise, target))

        async with self._turn((user.token if isinstance(user, Caller) else user.id, name)):
            async for event in arun(turn(), self.executor, inline=self._turn_inline()):
                if isinstance(event, Reply):
                    return event, _replayed(event)
        raise AssertionError("a turn ends with its Reply")  # pragma: no cover

    async def send(self, chat: Chat, content: UserInput | None, key: str | None = None, *,
                   temperature: float | None = None, max_tokens: int | None = None,
                   thinking: int | None = None, tools: Sequence[ToolSpec] = (),
                   tool_choice: ToolChoice | None = None,
                   revise: Revision | None = None, api: str | None = None,
                   ) -> tuple[Reply, bool]:
        """One turn; returns the reply and whether it was replayed from an earlier request with
        the same idempotency key (Chat stores the key with the message and answers a retry with
        the stored reply). The options are Chat.send's, for this turn only; ``revise``: the
        turn replaces the newest one (colloquy.branches); ``api``: TurnOptions.api."""
        options = TurnOptions.of(temperature, max_tokens, thinking, tools,
                                 tool_choice=tool_choice, api=api)
        async with self._turn(chat.session_id):
            async for event in arun(chat._turn(content, False, key, options, revise),
                                    chat.executor, inline=self._turn_inline()):
                if isinstance(event, Reply):
                    return event, _replayed(event)
        raise AssertionError("a turn ends with its Reply")  # pragma: no cover

    async def stream(self, chat: Chat, content: UserInput | None, key: str | None = None, *,
                     temperature: float | None = None, max_tokens: int | None = None,
                     thinking: int | None = None, tools: Sequence[ToolSpec] = (),
                     tool_choice: ToolChoice | None = None,
                     revise: Revision | None = None, target: int | None = None,
                     api: str | None = None,
                     ) -> AsyncIterator[str | ThinkingDelta | tuple[Reply, bool]]:
        """Text deltas (and thinking deltas), then ``(reply, replayed)``. Text deltas that
        arrive while the previous one is still being sent go out as one
        (colloquy.server.coalesce). The options are :meth:`send`'s."""
        options = TurnOptions.of(temperature, max_tokens, thinking, tools,
                                 tool_choice=tool_choice, api=api)
        async with self._turn(chat.session_id):
            async for event in coalesced(arun(
                    chat._turn(content, True, key, options, revise, target), chat.executor,
                    inline=self._turn_inline())):
                if isinstance(event, Reply):
                    yield event, _replayed(event)
                elif isinstance(event, ThinkingDelta) or (isinstance(event, str) and event):
                    yield event

    # -- context --------------------------------------------------------------------------------

    def context_seen(self, user: User, name: str, seq: int) -> SeenContext:
        """What reply ``seq`` of the caller's conversation was sent (colloquy.context.seen),
        named as the caller names the conversation."""
        conv = self.owned(user, name)
        return seen(self.store, conv.id, seq).model_copy(update={"conversation_id": name})

    def context(self, user: User, name: str, message: str | None = None
                ) -> tuple[dict[str, Any], int]:
        if message is not None:  # the limits a sent message has: 422 blank, 413 too long
            message = self.check_content(message)
        chat = self.chat(user, name)
        conv = self.store.get_conversation(chat.session_id)
        if message is None and conv.last_seq == 0:
            raise InvalidRequest(
                "the conversation is empty: pass ?message=TEXT to see the request a first "
                "message would make"
            )
        request = chat.next_request(message)
        return request.to_anthropic(), chat.count_tokens(request)

    # -- facts ----------------------------------------------------------------------------------

    def facts(self, user: User) -> tuple[list[Fact], dict[str, str]]:
        """The caller's active facts, and the names the caller knows their source conversations
        by (conversation id -> name; a deleted conversation is absent)."""
        facts: list[Fact] = self.store.list_facts(user.id)  # type: ignore[attr-defined]
        return facts, conversation_names(self.store, user.id,
                                         (f.source_conversation for f in facts))

    def add_fact(self, user: User, statement: str, subject: str | None) -> Fact:
        fact = Fact(user_id=user.id, subject=subject or "", statement=statement.strip(),
                    origin="user")
        return self.store.add_fact(fact, owner=_owner(user))  # type: ignore[attr-defined, no-any-return]

    def forget_fact(self, user: User, fact_id: str) -> None:
        """Delete one of the caller's facts; another user's id is not found, like a bad id."""
        if not self.store.forget_facts(user.id, [clean(fact_id)]):  # type: ignore[attr-defined]
            raise FactNotFound(fact_id)

    # -- the caller's own data ----------------------------------------------------------------

    def export(self, user: User) -> dict[str, Any]:
        """Everything held about the caller (colloquy.rights.export_user)."""
        return export_user(self.store, user.id)

    def delete_me(self, user: User) -> DeleteReport:
        """Delete every row about the caller, their user record (and so their token) included,
        and erase the bytes (colloquy.rights.delete_user)."""
        return delete_user(self.store, user.id)

    # -- the compatible routes (OpenAI, Anthropic) -----------------------------------------------

    def offered_model(self, name: str | None) -> str | None:
        """``name`` when this server offers it (None stays None: the default);
        :class:`ModelNotFound` otherwise, never a silent answer by another model."""
        if name is not None and name not in self._models:
            raise ModelNotFound(name, self._models)
        return name

    async def client_turn(
        self, user: User, name: str | None, system: str | None, history: Sequence[Message],
        new: Message, model: str | None, key: str | None, api: str,
    ) -> tuple[Conversation, Chat, Ticket, bool]:
        """A compatible route's turn set up: a place among the turns in flight (503 at once
        past the limit), the conversation (:meth:`conversation_for_client`) and its Chat with
        the idempotency key checked for this ``api`` (:meth:`prepare_stream`), in one trip to
        a thread. The last item: whether the key was already answered, so the turn will
        replay (``Idempotent-Replayed``, said before a stream starts, as the native route
        does)."""
        ticket = self.inflight.admit()
        try:
            def prepare() -> tuple[Conversation, Chat, bool]:
                conv = self.conversation_for_client(user, name, system, history, new, model,
                                                    key=key)
                assert conv is not None  # (created when missing)
                return conv, *self.prepare_stream(user, conv.name, new, key, api=api)

            conv, chat, replay = await self.run(prepare)
        except BaseException:
            ticket.release()
            raise
        return conv, chat, ticket, replay

    def conversation_for_client(
        self, user: User, name: str | None, system: str | None, history: Sequence[Message],
        new: Message, model: str | None, *, create: bool = True, key: str | None = None,
    ) -> Conversation | None:
        """The conversation a compatible route's request continues (None only with
        ``create=False``, when there is none yet).

        Named (header, metadata, ``user``): the caller's conversation of that name, created on
        first use with the client's system message as its persona and seeded with the replayed
        history, like an unnamed one (another user's conversation of that name is never
        touched, nor visible).

        Unnamed, for a client that replays its whole history each time (as ``llm`` and most SDK
        code do): one stored conversation per client conversation. Its name is ``replay-`` and
        a hash of the persona and the first message (``-2``, ``-3``... for later conversations
        starting alike). A request whose history holds earlier turns continues the one of those
        whose last stored reply is the last assistant message it replays; a request with no
        earlier turn, or whose history matches none (edited, or from elsewhere), starts a new
        one, seeded with the replayed history so that the model sees it. A request whose
        idempotency ``key`` one of those conversations already holds is a retry: it continues
        that one (its history no longer ends with that conversation's last reply, which
        answered the first attempt)."""
        if name is not None:
            if not _CONVERSATION_ID.match(name):
                raise InvalidRequest("conversation names are 1-128 characters: letters, digits, "
                                     "'_', '.', ':', '@', '-'")
            conv = self.store.find_named(user.id, name)
            if conv is not None or not create:
                return conv
            try:
                return self._seeded(user, system, model, name, history)
            except StoreError:
                return self.owned(user, name)  # created meanwhile by another request
        first = history[0] if history else new
        seed = json.dumps([system or "", first.model_dump(mode="json", exclude_none=True)],
                          sort_keys=True)
        base = "replay-" + hashlib.sha256(seed.encode()).hexdigest()[:20]
        last = next((m for m in reversed(history) if m.role == "assistant"), None)
        for n in range(1, 10_000):
            name = base if n == 1 else f"{base}-{n}"
            conv = self.store.find_named(user.id, name)
            if conv is None:
                if not create:
                    return None
                try:
                    return self._seeded(user, system, model, name, history)
                except StoreError:
                    continue  # taken meanwhile by another request of the caller
            # Each candidate is judged by indexed reads, not by loading its whole log into a
            # cached Chat: a client whose chats all start alike made every request load them
            # all (28 ms a request at 10 such conversations, 182 ms at 300: attack7 F4).
            if key is not None and find_keyed(self.store, conv.id, key, [] if callable(getattr(
                    self.store, "find_by_idempotency_key", None)) else self.store.load(conv.id)):
                return conv
            if last is not None and _same_reply(self._newest(conv), last):
                return conv
        raise InvalidRequest("too many conversations start with this message")  # pragma: no cover

    def _seeded(self, user: User, system: str | None, model: str | None, name: str,
                history: Sequence[Message]) -> Conversation:
        """A new conversation of the caller named ``name`` (its name taken: StoreError),
        seeded with the history the client replays, so the model sees it (the tool calls that
        the request's tool results answer included), whether the client named it or not."""
        conv = self.create(user, system=system, model=model, name=name)
        if history:
            self.store.append(conv.id, [NewMessage(message=m) for m in history],
                              owner=Owner(conversation_id=conv.id, generation=conv.generation))
        return conv

    def _newest(self, conv: Conversation, tail: int = 16) -> list[StoredMessage]:
        """The conversation's newest messages, its last reply among them (the whole log when
        the last ``tail`` messages hold no reply: a long run of tool results)."""
        newest = self.store.load(conv.id, after_seq=max(0, conv.last_seq - tail))
        if conv.last_seq <= tail or any(sm.role == "assistant" for sm in newest):
            return newest
        return self.store.load(conv.id)

    def count_for_client(
        self, user: User, name: str | None, system: str | None, history: Sequence[Message],
        new: Message, tools: Sequence[ToolSpec],
    ) -> int:
        """Input tokens of the request the turn would send (``count_tokens``): the continued
        conversation's context with the new message, or, when there is none yet, the client's
        own history; nothing is stored."""
        conv = self.conversation_for_client(user, name, system, history, new, None, create=False)
        if conv is not None:
            chat = self.chat(user, conv.name)
        else:
            chat = Chat(self.default_model, store=MemoryStore(), system=system or self.settings.system,
                        policy=self.policy, max_tokens=self.settings.max_tokens)
            if history:
                chat.store.create_conversation(id=chat.session_id, persona=chat.system,
                                               model=chat.model.name)
                chat.store.append(chat.session_id, [NewMessage(message=m) for m in history])
        request = chat.next_request(new)
        declared = [t for t in tools if t.name not in {s.name for s in request.tools}]
        return chat.count_tokens(request.model_copy(update={"tools": [*request.tools, *declared]}))


def _same_reply(log: Sequence[StoredMessage], replayed: Message) -> bool:
    """Whether the log's last assistant message is the one a client replays (its text and tool
    calls: what the compatible routes returned)."""
    stored = next((sm.message for sm in reversed(log) if sm.role == "assistant"), None)
    return stored is not None and stored.text == replayed.text and \
        [b.id for b in stored.tool_uses] == [b.id for b in replayed.tool_uses]


def steps_stay_local(store: Store) -> bool:
    """Whether a turn's steps may run on the event loop (colloquy.effects): the store's calls
    never wait on a network (``store.in_process``: SQLite, memory). A turn whose own steps may
    wait (a guard, fact extraction, a title, a policy's model or encoder: Chat yields
    MayWait) runs them on the threads from there on."""
    return bool(getattr(store, "in_process", False))


def _resolve_policy(settings: ServerSettings, model: Model) -> ServerSettings:
    """Settings whose policy is a ContextPolicy (or None): a name is built as the CLI builds it;
    anything else is a ConfigError naming the forms accepted, raised before the service
    starts (a policy that only fails in a turn would answer every turn 500)."""
    from ..context.presets import POLICY_NAMES, make_extraction, make_policy

    policy = settings.policy
    if policy is None or isinstance(policy, ContextPolicy):
        return settings
    forms = f"a ContextPolicy (e.g. RollingWindow(turns=20)) or a policy name ({', '.join(POLICY_NAMES)})"
    if not isinstance(policy, str):
        raise ConfigError(f"policy must be {forms}, not {policy!r}")
    if policy not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {policy!r}: use {forms}")
    extraction = settings.extract_facts
    if extraction is None:
        extraction = make_extraction(policy, chat_model=model)
    return replace(settings, policy=make_policy(policy, chat_model=model), extract_facts=extraction)


def _owner(user: User) -> Owner:
    """Writes for a request are refused once its user is deleted (or deleted and re-added)."""
    return Owner(user_id=user.id, user_generation=user.generation)


def replayed_header(replayed: bool) -> dict[str, str]:
    """``Idempotent-Replayed: true`` on a replayed turn's response (JSON or stream), the header
    Stripe's API marks a replay with; nothing otherwise."""
    return {"Idempotent-Replayed": "true"} if replayed else {}


def _replayed(reply: Reply) -> bool:
    return any(n.startswith(REPLAYED_NOTE) for n in reply.notes)
