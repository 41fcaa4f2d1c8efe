"""The chat engine: the one place where a turn happens.

    persist the user's message        (so a failed call never loses it)
      -> build the context            (the policy turns the stored log into system + messages)
      -> repair and validate          (a stored log must never become unsendable)
      -> call the model               (stream or not; tool rounds until it stops asking)
      -> persist the reply and usage  (one transaction)

The CLI and the HTTP server call :class:`Chat`; they never assemble prompts, touch SQL or call a
provider themselves. The turn is written once (:meth:`Chat._turn`), as a generator of the waits
it needs (the turn lock, the model, tools: see :mod:`colloquy.effects`); the sync API drives it
with blocking calls, the async API on the event loop with the SDKs' async clients, so a turn
waiting on a model holds no thread.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any


from .branches import CurrentBranch, Revision, revised_turn, revision_meta
from .context.base import Context, ContextInput, ContextPolicy
from .context.default import DefaultPolicy
from .context.fit import fit_to_window
from .context.seen import CONTEXT, SeenContext, record as context_record, seen
from .context.thinking import (
    OFF_NOTE, FinishedTurns, check_budget, replay_thinking, thinking_off_after_repair,
)
from .context.validate import repair_owned_request, validate
from .memory.engine import extract_after_turn, persist_derived
from .memory.extract import FactExtraction
from .costs import SessionCost, derived_side_call, session_cost, with_side_call
from .continuity import (auto_title, check_key, claim_and_read, claim_turn, find_keyed,
                         fingerprint, key_answered, key_meta, prior_turn)
from .effects import (Acquire, CallModel, Emit, MayWait, RunTools, Turn, TurnInterrupted, arun,
                      policy_may_wait, run, steps_may_wait)
from .errors import (ColloquyError, ConfigError, ConversationNotFound, InvalidTextError,
                     MissingAPIKeyError, ToolError)
from .gc_freeze import took_in
from .guards import Guard, GuardSet, replace_text
from .messages import (USAGE_ESTIMATED, ContentBlock, Message, StoredMessage, TextBlock,
                       ToolResultBlock)
from .models import (Model, ModelRequest, ModelResponse, ThinkingDelta, ToolChoice, ToolSpec,
                     get_model, model_spec)
from .models.limits import window_of
from .store import Conversation, NewMessage, Store, new_id, open_store
from .store.base import forget_cached
from .store.owner import Owner
from .telemetry import call_purpose, conversation, isolated
from .telemetry.turns import context_attributes, store_system, turn_span, work_span
from .tokens import TokenCounter, counter as default_counter, estimate_text, estimate_tools
from .text import clean_persona, require_text
from .tools import Tool, as_tools
from .reply import CANCELLED, NOT_RUN, Reply, not_run_reason
from .turn_guards import blocked_turn, guard_reply, run_guards
from .turn_options import NO_OPTIONS, TurnOptions
from .usage import Usage, add_costs

log = logging.getLogger("colloquy")


UserInput = str | Message | Sequence[ContentBlock]


def _user_message(content: UserInput) -> Message:
    """The user's new message, checked by the text rules (colloquy.text): a message with no
    content, or a text block that is empty or only whitespace, raises InvalidTextError."""
    if isinstance(content, str):
        return Message.user(require_text(content, "the message"))
    message = content if isinstance(content, Message) else Message(role="user", content=list(content))
    if message.role != "user":
        raise ValueError("a turn starts with a user message")
    if not message.content:
        raise InvalidTextError("the message is empty")
    for b in message.content:
        if isinstance(b, TextBlock):
            require_text(b.text, "a text block of the message")
    return message


class Chat:
    """A conversation with a model, persisted in a store and trimmed by a context policy.

    ``Chat(model="echo", system="You are terse.", session_id="demo")`` resumes session "demo" if
    it exists (keeping its persona and model unless new ones are given) or starts it.
    """

    def __init__(
        self,
        model: Model | str | None = None,
        *,
        system: str | None = None,
        store: Store | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        policy: ContextPolicy | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        temperature: float | None = None,
        max_tokens: int = 1024,
        max_tool_rounds: int = 10,
        title_model: Model | str | bool | None = None,
        counter: TokenCounter | None = None,
        extract_facts: FactExtraction | None = None,
        guards: Sequence[Guard | Callable[..., Any]] = (),
        executor: Executor | None = None,
        context_window: int | None = None,
        create_missing: bool = True,
        thinking: int | None = None,
    ) -> None:
        self.store: Store = store if store is not None else open_store()
        #: False: a turn on a conversation that does not exist (deleted by another request or
        #: process meanwhile) raises ConversationNotFound instead of starting it anew; the
        #: service passes False, since it creates (and checks) conversations itself.
        self.create_missing = create_missing
        # Ids given explicitly follow the text rules: "" is refused, not taken as "none".
        self.session_id = new_id() if session_id is None else require_text(session_id, "the session id")
        user_id = None if user_id is None else require_text(user_id, "the user id")
        existing = self.store.find_conversation(self.session_id)
        if existing is not None and user_id is not None and existing.user_id not in (None, user_id):
            raise ColloquyError(f"session {self.session_id!r} belongs to another user")
        if model is None and existing is not None and existing.model:
            model = existing.model
            try:
                self.model: Model = get_model(model)
            except MissingAPIKeyError:
                raise
            except ConfigError as e:  # stored before models kept their provider prefix
                raise ConfigError(
                    f"session {self.session_id!r} was stored with model {model!r}: {e}; name "
                    f"its model again with its provider, e.g. ollama:{model}") from e
        else:
            self.model = model if isinstance(model, Model) else get_model(model)
        #: The persona; whitespace only means none (colloquy.text).
        self.system = clean_persona(system) if system is not None else (
            existing.persona if existing else "")
        self.user_id = user_id if user_id is not None else (existing.user_id if existing else None)
        # The default remembers: recent turns plus recalled older ones, under a budget fitted to
        # the model (context/default.py). One per Chat: it holds this conversation's index.
        self.policy: ContextPolicy = policy or DefaultPolicy()
        self.tools = as_tools(tools)
        self.temperature = temperature
        self.max_tokens = max_tokens
        #: Extended thinking's budget in tokens for every turn (None: off; at least 1,024); a
        #: turn's own ``thinking=`` overrides it. The answer keeps its own ``max_tokens`` on top.
        self.thinking = check_budget(thinking)
        self.max_tool_rounds = max_tool_rounds
        self.counter = counter or default_counter
        #: Fact extraction after turns (colloquy.memory); None: off.
        self.extract_facts = extract_facts
        #: Titles new conversations (see colloquy.continuity.title_model_for); False: first words.
        self.title_model = title_model
        self.guards = GuardSet(guards)
        #: Where the async API runs the turn's short steps between waits (store transactions,
        #: the policy); None: the event loop's default executor. The model call itself is
        #: awaited on the loop and holds no thread.
        self.executor = executor
        #: The most tokens a request may hold, reply included (None: the model's own, from
        #: colloquy.models.limits). Every request is fitted under it, whatever the policy.
        self.context_window = context_window
        self._conversation = existing
        #: The generation of the conversation this Chat's view (log, caches) belongs to.
        self._generation: str | None = existing.generation if existing else None
        self._owner: Owner | None = None  # see owner
        self._log: list[StoredMessage] = []
        #: What of the log is replayed to the model (colloquy.branches): one filter, kept
        #: incremental over ``_log``.
        self._branch = CurrentBranch()
        self._finished = FinishedTurns()  # thinking of finished turns left out, incrementally
        #: Guards the loaded log (short holds: a store read or write).
        self._lock = threading.RLock()
        #: One turn at a time on this Chat; held across the model call, so it is a plain Lock
        #: (any thread may release it: the async API's steps run on different threads).
        self._gate = threading.Lock()
        #: The fence of the turn in flight (store/locks.py, Fencing); None between turns.
        self._fence: str | None = None

    # -- the log -------------------------------------------------------------------------------

    @property
    def conversation(self) -> Conversation | None:
        """The stored record; None until the first message is stored."""
        return self._conversation

    @property
    def generation(self) -> str | None:
        """The generation of the conversation this Chat holds (None before it exists): another
        one means the conversation was deleted and created anew, by any process."""
        return self._generation

    @property
    def owner(self) -> Owner:
        """On whose behalf this Chat writes: its conversation, as the generation it read. A
        write for a conversation deleted (or replaced) meanwhile is refused (store/owner.py)."""
        owner = self._owner
        if owner is None or owner.generation != self._generation:
            # Frozen: one per generation, not one per write (a few a turn).
            owner = self._owner = Owner(conversation_id=self.session_id,
                                        generation=self._generation)
        return owner

    def _ensure_conversation(self) -> Conversation:
        conv = self._conversation or self.store.find_conversation(self.session_id)
        spec = model_spec(self.model)  # "ollama:llama3", so a resumed session finds its provider
        if conv is None and not self.create_missing:
            raise ConversationNotFound(self.session_id)
        if conv is None:
            conv = self.store.create_conversation(
                id=self.session_id, user_id=self.user_id, persona=self.system, model=spec
            )
        elif conv.persona != self.system or conv.model != spec:
            conv = self.store.update_conversation(
                self.session_id, persona=self.system, model=spec,
                owner=Owner(conversation_id=self.session_id, generation=conv.generation),
            )
        self._conversation = conv
        self._generation = conv.generation
        return conv

    def history(self) -> list[StoredMessage]:
        """The whole stored log, oldest first, synced with the store."""
        self._sync()
        return list(self._log)

    def current_branch(self) -> list[StoredMessage]:
        """The stored messages a model is shown again, oldest first: the log without
        superseded turns (edits, regenerations) and blocked turns (colloquy.branches)."""
        with self._lock:
            self._sync()
            return list(self._branch.visible(self._log))

    def _sync(self, claim: bool = False) -> None:
        """Read only what other writers appended since our last read: a turn's cost must not
        grow with the conversation's length.

        The same query returns the conversation's generation: when another process deleted
        the conversation, or deleted it and created it anew, the view held here (log, cached
        record, recall index, summary cache) is dropped, never served or spliced into the new
        conversation's requests. ``claim``: the turn's claim (claim_turn) is made by the same
        store call."""
        with self._lock:
            self._sync_locked(claim)

    def _sync_locked(self, claim: bool = False) -> None:
        after = self._log[-1].seq if self._log else 0
        with work_span("colloquy.store.load", **{"db.system.name": store_system(self.store),
                                                 "colloquy.store.after_seq": after}) as span:
            if claim:
                self._fence, read = claim_and_read(self.store, self.session_id, after)
            else:
                read = self.store.read_log(self.session_id, after_seq=after)
            if read is None or (self._generation is not None and read.generation != self._generation):
                self._forget_view()
                if read is None:
                    return
                after = 0
                read = self.store.read_log(self.session_id)
                if read is None:
                    return
            self._generation = read.generation
            new = read.messages
            span.set_attribute("colloquy.store.messages", len(new))
        if new and new[0].seq != after + 1:  # a gap: someone rewrote history (e.g. import)
            self._log = self.store.load(self.session_id)
        else:
            self._log.extend(new)
        took_in(len(new))  # a long log leaves the collector's full walks (colloquy.gc_freeze)
        if after == 0 and self._log:
            self._calibrate_from_log()

    def _forget_view(self) -> None:
        """The conversation is gone or replaced: drop what this process holds of it."""
        had = self._generation is not None or bool(self._log)
        self._log = []
        self._conversation = None
        self._generation = None
        if had:
            forget_cached([self.session_id], self.store)  # recall indexes, summary caches, cached Chats

    def _calibrate_from_log(self) -> None:
        """Resume the token estimator's calibration from stored replies: each carries the raw
        estimate of its request and the tokens really billed, so a new process starts as well
        calibrated as the last one ended."""
        seen = 0
        for sm in reversed(self._log):
            raw = sm.meta.get("raw_input_estimate")
            if sm.usage is not None and raw and sm.model == self.model.name and not sm.usage.estimated:
                self.counter.calibrate(self.model.name, int(raw), sm.usage.prompt_tokens)
                seen += 1
                if seen == 20:
                    break

    def _append(self, *items: NewMessage) -> list[StoredMessage]:
        # Under the turn lock the log is current; expected_seq catches a writer that bypassed it.
        with self._lock:
            last = self._log[-1].seq if self._log else 0
            with work_span("colloquy.store.append", **{"db.system.name": store_system(self.store),
                                                       "colloquy.store.messages": len(items)}):
                fenced = {"fence": self._fence} if self._fence is not None else {}
                stored = self.store.append(self.session_id, items, expected_seq=last,
                                           owner=self.owner, **fenced)
            if self._log and stored and stored[0].seq != self._log[-1].seq + 1:
                self._log = self.store.load(self.session_id)
            else:
                self._log.extend(stored)
            took_in(len(stored))
            return stored

    # -- context -------------------------------------------------------------------------------

    def _thinking(self, options: TurnOptions) -> int | None:
        return (options.thinking if options.thinking is not None else self.thinking) or None

    def _context_input(self, history: Sequence[StoredMessage],
                       options: TurnOptions = NO_OPTIONS) -> ContextInput:
        return ContextInput(
            history=history, system=self.system, model=self.model.name,
            tools=options.specs(self.tools),
            max_tokens=self._max_tokens(options) + (self._thinking(options) or 0),
            user_id=self.user_id, conversation_id=self.session_id, counter=self.counter,
            store=self.store, conversation_generation=self._generation,
        )

    def build_context(self, history: Sequence[StoredMessage] | None = None,
                      options: TurnOptions = NO_OPTIONS) -> Context:
        """Run the policy on the log, fit the result under the model's context window
        (colloquy.context.fit), apply the thinking replay rules (colloquy.context.thinking),
        then repair what the API would refuse."""
        if history is None:
            history = self.history()
        history = self._branch.visible(history)  # superseded, blocked turns: never replayed
        history = self._finished(history)  # thinking never sent (context.thinking)
        with work_span("colloquy.context") as span:
            inp = self._context_input(history, options)
            ctx = fit_to_window(self.policy.build(inp), inp, self.window)
            messages, sources, ctx.thinking, thinking_notes = replay_thinking(
                ctx.messages, self._thinking(options), ctx.sources or None)
            system, messages, sources, notes = repair_owned_request(ctx.system, messages, sources)
            if thinking_off_after_repair(messages, ctx.thinking):  # the repair merged a loop's
                messages, sources, ctx.thinking, _ = replay_thinking(messages, None, sources)
                system, messages, sources, more = repair_owned_request(system, messages, sources)
                notes += [OFF_NOTE, *more]
            ctx.system, ctx.messages, ctx.sources = system, messages, sources
            ctx.notes.extend(thinking_notes + notes)
            if span.is_recording():
                context_attributes(span, self.policy, len(history), ctx, self.counter.count(
                    self.model.name, ctx.system, ctx.messages,
                    extra=estimate_tools(options.specs(self.tools))))
        return ctx

    @property
    def window(self) -> int:
        """The context window every request is fitted under, in tokens."""
        return self.context_window or window_of(self.model)

    def _request(self, ctx: Context, options: TurnOptions = NO_OPTIONS,
                 ran_tools: bool = False) -> ModelRequest:
        """The request for a built context. With thinking, ``max_tokens`` is the answer's
        allowance plus the thinking budget (the API needs the budget below max_tokens), and no
        temperature is sent (the API refuses one with thinking). ``ran_tools``: colloquy ran
        tools earlier in this turn (:meth:`TurnOptions.choice_after`)."""
        validate(ctx.messages, ctx.system)
        budget = ctx.thinking
        temperature = options.temperature if options.temperature is not None else self.temperature
        if budget and temperature is not None:
            ctx.notes.append("temperature not sent: extended thinking takes none")
            temperature = None
        return ModelRequest(
            model=self.model.name, system=ctx.system, messages=ctx.messages,
            tools=options.specs(self.tools), tool_choice=options.choice_after(ran_tools),
            max_tokens=self._max_tokens(options) + (budget or 0),
            temperature=temperature, thinking=budget,
        )

    def _max_tokens(self, options: TurnOptions = NO_OPTIONS) -> int:
        return options.max_tokens or self.max_tokens

    def next_request(self, text: UserInput | None = None) -> ModelRequest:
        """Exactly the request the next turn would send, without sending or storing anything.

        With ``text``, it is the request for that new message; without, it is what the policy
        keeps of the stored log as it stands.
        """
        history = self.history()
        if text is not None:
            history.append(StoredMessage(
                conversation_id=self.session_id,
                seq=(history[-1].seq if history else 0) + 1,
                message=_user_message(text),
            ))
        return self._request(self.build_context(history))

    # -- turns ---------------------------------------------------------------------------------

    def send(self, content: UserInput | None, *, idempotency_key: str | None = None,
             temperature: float | None = None, max_tokens: int | None = None,
             thinking: int | None = None, tools: Sequence[ToolSpec] = (),
             tool_choice: ToolChoice | str | Mapping[str, Any] | None = None,
             revise: Revision | None = None, target: int | None = None) -> Reply:
        """One turn: store the message, call the model (and tools), store and return the reply.

        A retry with the same ``idempotency_key`` (after a network drop, say) stores nothing new
        and returns the stored reply (see colloquy.continuity); the same key with another
        message raises :class:`IdempotencyKeyReused` and stores nothing. ``temperature``,
        ``max_tokens`` and ``thinking`` (a budget in tokens, 0 for none; under 1,024 raises
        ValueError) override the chat's own for this turn only; ``tools`` are declared for this
        turn and not run by colloquy (see :class:`~colloquy.turn_options.TurnOptions`).
        ``tool_choice``: ``"auto"``, ``"any"`` (a call is forced), ``"none"``, or the Messages
        API's object (``{"type": "tool", "name": "lookup"}``, ``disable_parallel_tool_use``);
        ValueError when the turn offers no tools or not the one named. ``revise`` makes the turn replace the newest one (see :meth:`edit_last`,
        :meth:`regenerate`); ``content`` is None only with ``revise="regenerate"``. ``target``
        (with ``revise``): the seq of the message the revision is meant for; when it is no
        longer the newest turn's, :class:`~colloquy.errors.EditConflict` and nothing stored."""
        reply: Reply | None = None
        options = TurnOptions.of(temperature, max_tokens, thinking, tools, tool_choice=tool_choice)
        for event in run(self._turn(content, False, idempotency_key, options, revise, target)):
            if isinstance(event, Reply):
                reply = event
        assert reply is not None
        return reply

    def stream(
        self, content: UserInput | None, *, idempotency_key: str | None = None,
        temperature: float | None = None, max_tokens: int | None = None,
        thinking: int | None = None, tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | str | Mapping[str, Any] | None = None,
        revise: Revision | None = None, target: int | None = None,
    ) -> Iterator[str | ThinkingDelta | Reply]:
        """Like :meth:`send`, yielding text deltas (``str``) as they arrive, then the final
        :class:`Reply`; with thinking on, :class:`~colloquy.models.ThinkingDelta` pieces of the
        model's thinking come before the text of each model call.

        Closing the generator early (``stream.close()``, or leaving a ``for`` loop over it that
        is then closed) stops the model call and stores the text received so far with
        ``stop_reason`` ``"cancelled"`` and its usage."""
        options = TurnOptions.of(temperature, max_tokens, thinking, tools, tool_choice=tool_choice)
        yield from run(self._turn(content, True, idempotency_key, options, revise, target))

    def check_idempotency_key(self, content: UserInput | None, idempotency_key: str | None,
                              revise: Revision | None = None, target: int | None = None,
                              api: str | None = None) -> None:
        """Raise :class:`IdempotencyKeyReused` now if the key was already used in this
        conversation for another request (another message, or another operation: ``revise``
        and ``target`` as for :meth:`send`): what :meth:`send` would raise, checked without the
        turn lock, so a server can refuse with a status before it starts streaming (the check
        under the lock in :meth:`send` stays the one that counts). ``content`` None: a
        regeneration; ``api``: :attr:`TurnOptions.api`."""
        if idempotency_key is not None:
            check_key(self.store, self.session_id, idempotency_key, fingerprint(
                _user_message(content) if content is not None else None, revise, target, api),
                self._log)

    def check_target(self, revise: Revision | None, target: int | None,
                     idempotency_key: str | None = None) -> None:
        """Raise now, without the turn lock, what a revision would (NothingToRevise,
        EditConflict: see :meth:`send`), so a server refuses with a status before it streams;
        a retry (``idempotency_key`` stored) passes: the turn replays its first answer."""
        if revise is None:
            return
        with self._lock:
            self._sync()
            if idempotency_key is None or find_keyed(
                    self.store, self.session_id, idempotency_key, self._log) is None:
                revised_turn(self.session_id, self._log, revise, target)

    def idempotency_key_answered(self, content: UserInput | None, idempotency_key: str | None,
                                 revise: Revision | None = None, target: int | None = None,
                                 api: str | None = None) -> bool:
        """:meth:`check_idempotency_key`, and whether the key was already answered: the turn
        will replay the stored reply, which a server says in a header before a stream starts
        (one more store read than the check alone)."""
        if idempotency_key is None:
            return False
        return key_answered(self.store, self.session_id, idempotency_key, fingerprint(
            _user_message(content) if content is not None else None, revise, target, api),
            self._log)

    def edit_last(self, content: UserInput, *, idempotency_key: str | None = None,
                  temperature: float | None = None, max_tokens: int | None = None,
                  thinking: int | None = None, seq: int | None = None) -> Reply:
        """Replace the newest turn's user message with ``content`` and answer it.

        Nothing stored is rewritten: a new turn is appended whose user message names the old
        turn's seqs in its meta (``supersedes``), and from then on the old turn is shown to no
        model (colloquy.branches). ``seq``: the seq of the user message meant; when another
        message was sent (or the turn revised) since, from another tab or device, raises
        :class:`colloquy.errors.EditConflict` and stores nothing, rather than replace a
        message the user did not mean. Raises :class:`colloquy.errors.NothingToRevise` when
        the conversation has no turn yet. ``temperature``, ``max_tokens`` and ``thinking`` (a
        budget in tokens, 0 for none) are :meth:`send`'s, for this turn only."""
        return self.send(content, idempotency_key=idempotency_key, temperature=temperature,
                         max_tokens=max_tokens, thinking=thinking, revise="edit", target=seq)

    def regenerate(self, *, idempotency_key: str | None = None, temperature: float | None = None,
                   max_tokens: int | None = None, thinking: int | None = None,
                   seq: int | None = None) -> Reply:
        """Answer the newest turn's user message again, as a new turn that supersedes the old
        one (see :meth:`edit_last`). ``seq``: the seq of the reply meant (any message of the
        newest turn is accepted); :class:`colloquy.errors.EditConflict` when that turn is no
        longer the newest. The options are :meth:`edit_last`'s (a regeneration may think
        where the first answer did not: ``thinking=4096``)."""
        return self.send(None, idempotency_key=idempotency_key, temperature=temperature,
                         max_tokens=max_tokens, thinking=thinking, revise="regenerate",
                         target=seq)

    async def asend(self, content: UserInput | None, *, idempotency_key: str | None = None,
                    temperature: float | None = None, max_tokens: int | None = None,
                    thinking: int | None = None, tools: Sequence[ToolSpec] = (),
                    tool_choice: ToolChoice | str | Mapping[str, Any] | None = None,
                    revise: Revision | None = None, target: int | None = None) -> Reply:
        """The async twin of :meth:`send`: the model call is awaited on the event loop (the
        SDKs' async clients), the short steps around it run on :attr:`executor`. Cancelling
        the task stops the model call and stores the partial reply (see :meth:`stream`)."""
        reply: Reply | None = None
        options = TurnOptions.of(temperature, max_tokens, thinking, tools, tool_choice=tool_choice)
        async for event in arun(self._turn(content, False, idempotency_key, options, revise,
                                           target),
                                self.executor):
            if isinstance(event, Reply):
                reply = event
        assert reply is not None
        return reply

    def astream(
        self, content: UserInput | None, *, idempotency_key: str | None = None,
        temperature: float | None = None, max_tokens: int | None = None,
        thinking: int | None = None, tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | str | Mapping[str, Any] | None = None,
        revise: Revision | None = None, target: int | None = None,
    ) -> AsyncIterator[str | ThinkingDelta | Reply]:
        """The async twin of :meth:`stream` (cancelling the task or closing the iterator stops
        the model call and stores the partial reply). Nothing runs until it is iterated."""
        options = TurnOptions.of(temperature, max_tokens, thinking, tools, tool_choice=tool_choice)
        return arun(self._turn(content, True, idempotency_key, options, revise, target),
                    self.executor)

    def _turn(
        self, content: UserInput | None, streaming: bool, idempotency_key: str | None = None,
        options: TurnOptions = NO_OPTIONS, revise: Revision | None = None,
        target: int | None = None,
    ) -> Turn:
        """The turn, once for every caller: a generator of the effects it waits on (see
        colloquy.effects), returning the Reply; traced, its span (colloquy.telemetry.turns)
        current while the turn's own code runs, in a private context the caller never sees."""
        if content is None and revise != "regenerate":
            raise ValueError("a turn needs a message (only regenerate reuses the last one)")
        if target is not None and revise is None:
            raise ValueError("a target (seq) names the message an edit or regenerate is for")
        options.check_choice(self.tools)
        given = _user_message(content) if content is not None else None
        return isolated(self._traced_turn(given, streaming, idempotency_key, options, revise,
                                          target))

    def _traced_turn(
        self, given: Message | None, streaming: bool, idempotency_key: str | None,
        options: TurnOptions, revise: Revision | None, target: int | None = None,
    ) -> Turn:
        with turn_span(self.session_id, self.model, streaming) as scope, \
                conversation(self.session_id):
            # One turn at a time per conversation, across processes (colloquy.continuity):
            # the locks are the first effect; the wait is a span of its own.
            with work_span("colloquy.turn_lock", **{"gen_ai.conversation.id": self.session_id}):
                release = yield Acquire(self)
            try:
                reply = yield from self._locked_turn(given, streaming, idempotency_key,
                                                     options, revise, scope.delta, target)
            finally:
                self._fence = None
                release()
            outcome = "blocked" if reply.blocked else "replayed" if any(
                n.startswith("replayed") for n in reply.notes) else "ok"
            scope.finished(usage=reply.usage, cost_usd=reply.cost_usd, rounds=reply.rounds,
                           outcome=outcome)
            return reply

    def _locked_turn(
        self, given: Message | None, streaming: bool, idempotency_key: str | None,
        options: TurnOptions, revise: Revision | None, delta: Callable[[], None],
        target: int | None = None,
    ) -> Turn:
        # First: the fence claimed (None: no record yet) with the log read, which notices a
        # conversation deleted or replaced elsewhere.
        self._sync(claim=True)
        moved = steps_may_wait(self)  # on the threads from here (MayWait)
        if moved:
            yield MayWait()
        # The fingerprint is of the request as sent: its operation, message and target; taken
        # for a keyed turn only (without a key there is nothing to compare it with).
        asked = fingerprint(given, revise, target, options.api) if idempotency_key is not None \
            else ""
        prior = prior_turn(self, idempotency_key, asked)
        if isinstance(prior, Reply):  # a retry of an answered request: nothing new stored
            if streaming and prior.text:
                delta()
                yield Emit(prior.text)
            return prior
        message, revision = self._revision(given, prior, revise, target)
        extra_meta = {**key_meta(idempotency_key, asked), **revision}
        self._ensure_conversation()
        if self._fence is None:  # the conversation's first turn: its record exists now
            self._fence = claim_turn(self.store, self.session_id)
        checked = run_guards(self, "input", message.text)
        if checked.changed:
            message = replace_text(message, checked.text)
        if checked.blocked is not None:
            reply = blocked_turn(self, message, checked, extra_meta)
            if reply.text:
                delta()
            yield Emit(reply.text)
            return reply
        if prior is None:  # else: a retry whose first attempt died before answering
            self._append(NewMessage(message=message, meta={**checked.meta(), **extra_meta}))
        total: Usage | None = None  # the first call's usage as it is; a sum from the second
        #: Priced per call and added up: tiered prices apply to each call, not to the sum.
        costs: list[float | None] = []  # unknown (None) for a call without a price or usage
        notes: list[str] = []
        paused: list[ContentBlock] = []  # the stored parts of a reply paused by the provider
        rounds = 0
        ran_tools = False
        while True:
            rounds += 1
            if not moved and (moved := policy_may_wait(self, self._log, options)):
                yield MayWait()  # the log grew (the message, tool results): it may wait now
            ctx = self.build_context(self._log, options)
            notes.extend(persist_derived(self.store, ctx.derived, self.owner))
            for record in ctx.derived:  # e.g. a summary written for this turn: billed too
                self._account_derived(record)
            request = self._request(ctx, options, ran_tools)
            notes.extend(n for n in ctx.notes if n not in notes)
            buffered = streaming and bool(self.guards.stage("output"))
            try:
                with call_purpose("turn"):  # the call's span is a child of the turn's
                    response = yield CallModel(self.model, request, streaming and not buffered,
                                               contextvars.copy_context(), delta)
            except TurnInterrupted as stop:
                self._store_interrupted(request, stop)
                raise
            raw_estimate = self._calibrate(request, response)
            notes.extend(n for n in response.notes if n not in notes)
            total = response.usage if total is None else total + response.usage
            cost = self.model.cost(response.usage)
            costs.append(cost)
            meta: dict[str, Any] = {"raw_input_estimate": raw_estimate, CONTEXT: context_record(
                ctx, self.system, model=self.model.name, counter=self.counter,
                raw_total=raw_estimate, tools=request.tools)}
            if response.stop_reason:
                meta["stop_reason"] = response.stop_reason
            if response.usage.estimated:  # the provider sent no usage (see Usage)
                meta[USAGE_ESTIMATED] = True
            reply_row = NewMessage(
                message=response.message, usage=response.usage,
                model=response.model or self.model.name, cost_usd=cost, meta=meta,
            )
            if response.stop_reason == "pause_turn" and rounds <= self.max_tool_rounds:
                # A long server-tool turn paused by the provider: sending the partial reply
                # back lets it go on (Anthropic's pause_turn); the parts are one reply.
                self._append(reply_row)
                paused.extend(response.content)
                continue
            calls = response.tool_uses
            held = not_run_reason(response.stop_reason)
            if held and (calls or response.stop_reason != "stop_sequence"):
                notes.append(held + (f"; its tool call(s) {', '.join(c.name for c in calls)} "
                                     "were not run" if calls else ""))
            if not calls or not self.tools or held or options.declared_call(calls, self.tools):
                response, reply_row, checked_out = guard_reply(self, response, reply_row)
                (stored,) = self._append(reply_row)
                if calls and held:  # answered, so the log stays valid for the next turn
                    self._append(NewMessage(message=Message(role="user", content=[
                        ToolResultBlock(tool_use_id=c.id, is_error=True,
                                        content=f"not run: {held}") for c in calls
                    ]), meta={"stop_reason": response.stop_reason}))
                if buffered and response.text:
                    delta()
                    yield Emit(response.text)  # output guards ran on the whole text first
                notes.extend(extract_after_turn(self))  # never raises
                auto_title(self, response.text)  # never raises
                whole = Message(role="assistant", content=[*paused, *response.content]) \
                    if paused else response.message
                return Reply(
                    text=whole.text, message=whole, conversation_id=self.session_id,
                    seq=stored.seq, usage=total, cost_usd=add_costs(costs),
                    model=response.model or self.model.name, stop_reason=response.stop_reason,
                    rounds=rounds, notes=notes,
                    guards=[v.record() for v in checked.verdicts + checked_out.verdicts],
                )
            # Store the tool call before running it: if the process dies mid-tool, the log
            # still shows what was asked (and repair answers it as interrupted).
            self._append(reply_row)
            if rounds > self.max_tool_rounds:
                # Over the limit: answer the calls without running them (the log stays valid).
                skipped = f"not run: over the limit of {self.max_tool_rounds} tool rounds"
                self._append(NewMessage(message=Message(role="user", content=[
                    ToolResultBlock(tool_use_id=c.id, is_error=True, content=skipped)
                    for c in calls
                ])))
                raise ToolError(
                    f"the model was still calling tools after {self.max_tool_rounds} rounds; "
                    "every call and result is stored, send a new message to go on"
                )
            results = yield RunTools(self.tools, calls, contextvars.copy_context())  # tool spans
            ran_tools = True
            self._append(NewMessage(message=Message(role="user", content=list(results))))

    def _store_interrupted(self, request: ModelRequest, stop: TurnInterrupted) -> None:
        """Store what an interrupted call produced: the text so far (possibly none: the
        context skips an empty message), ``stop_reason`` "cancelled", and its usage, the
        provider's when it sent one, else estimated (``usage_estimated`` in the meta; the
        thinking streamed counts as output, as the API bills it): the provider bills a cut-off
        call too. Never raises (the caller's exception goes on)."""
        try:
            usage = stop.usage
            meta: dict[str, Any] = {"stop_reason": CANCELLED}
            if usage is None:
                usage = Usage(input_tokens=self.count_tokens(request),
                              output_tokens=sum(estimate_text(t) for t in (stop.text, stop.thinking)
                                                if t),
                              estimated=True)
                meta[USAGE_ESTIMATED] = True
            content: list[ContentBlock] = [TextBlock(text=stop.text)] if stop.text.strip() else []
            self._append(NewMessage(
                message=Message(role="assistant", content=content), usage=usage,
                model=self.model.name, cost_usd=self.model.cost(usage), meta=meta))
        except Exception as e:  # noqa: BLE001 - the interruption must go on
            log.warning("could not store the interrupted reply of %s: %s", self.session_id, e)

    def _revision(self, given: Message | None, prior: StoredMessage | None,
                  revise: Revision | None, target: int | None = None,
                  ) -> tuple[Message, dict[str, Any]]:
        """The turn's user message, and the meta that makes it replace the newest turn when
        ``revise`` asks (colloquy.branches), if ``target`` is still in it (EditConflict). A
        retry whose first attempt stored its message (``prior``) reuses it, revision meta
        included."""
        if prior is not None:
            return given or prior.message, {}
        if revise is None:
            assert given is not None
            return given, {}
        old, seqs = revised_turn(self.session_id, self._log, revise, target)
        return given or old, revision_meta(revise, seqs)

    def context_seen(self, seq: int | None = None) -> SeenContext:
        """What the model was sent for reply ``seq`` (default: the newest reply), from the
        record stored with it (colloquy.context.seen). Raises
        :class:`colloquy.errors.NoContextRecord` for a message without one."""
        with self._lock:
            self._sync()
            if seq is None:
                seq = next((sm.seq for sm in reversed(self._log) if sm.role == "assistant"), 0)
            return seen(self.store, self.session_id, seq, self._log)

    def _calibrate(self, request: ModelRequest, response: ModelResponse) -> int:
        """Fold the billed prompt size into the estimator; return the raw estimate (stored with
        the reply so later processes can calibrate too)."""
        raw = self.counter.raw(request.system, request.messages, extra=estimate_tools(request.tools))
        if response.usage.prompt_tokens and not response.usage.estimated:
            self.counter.calibrate(self.model.name, raw, response.usage.prompt_tokens)
        return raw

    def count_tokens(self, request: ModelRequest | None = None, *, exact: bool = False) -> int:
        """Input tokens of a request (default: the next one): the calibrated estimate, or with
        ``exact=True`` the provider's own count (Anthropic's count_tokens endpoint); falls back
        to the estimate when the provider has no counting call."""
        request = request or self.next_request()
        if exact:
            counted = self.model.count_tokens(request)
            if counted is not None:
                return counted
        return self.counter.count(
            self.model.name, request.system, request.messages, extra=estimate_tools(request.tools)
        )

    # -- accounting ----------------------------------------------------------------------------

    def cost(self) -> SessionCost:
        """Tokens and dollars per model call and for the whole session (colloquy.costs)."""
        return session_cost(self.history(), self.store.find_conversation(self.session_id))

    def _account_derived(self, record: Any) -> None:
        call = derived_side_call(record)
        if call is not None:
            self.record_side_call(*call)

    def record_side_call(self, purpose: str, model: str, usage: Usage, cost_usd: float | None) -> None:
        """Add a side call's usage to the session's totals (kept in the conversation record's
        meta, one entry per purpose and model, so it stays small). Called inside the turn, under
        its lock, so the read-modify-write cannot race another turn. Never raises."""
        try:
            conv = self.store.find_conversation(self.session_id)
            if conv is None:
                return
            meta = with_side_call(conv.meta, purpose, model, usage, cost_usd)
            self._conversation = self.store.update_conversation(self.session_id, meta=meta,
                                                                owner=self.owner)
        except Exception as e:  # noqa: BLE001 - accounting must never fail the turn
            log.warning("could not record a %s call for %s: %s", purpose, self.session_id, e)
