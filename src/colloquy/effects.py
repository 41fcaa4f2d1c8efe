"""The turn's waits, as effects, and the two drivers that perform them (sans-IO).

:meth:`colloquy.Chat._turn` is written once, as a generator: its steps (store reads and writes,
the context policy, guards, accounting) run inline, and whenever the turn must *wait* (for the
conversation's turn lock, for the model, for tools) it yields an effect and receives the result:

    release  = yield Acquire(chat)                     # the turn locks (a release callable back)
    response = yield CallModel(model, request, stream) # a ModelResponse back (deltas go out)
    results  = yield RunTools(tools, calls)            # tool_result blocks back
    yield Emit(text)                                   # text for the caller (a replay, a guarded reply)
    yield MayWait()                                    # the next steps may wait (see MayWait)

Two drivers perform them. :func:`run` is the sync API's (``Chat.send``/``Chat.stream``): the
SDKs' sync clients, blocking locks. :func:`arun` is the async API's (``Chat.asend``/
``Chat.astream``, the service): the model call is awaited on the event loop with the SDKs' async
clients (:meth:`Model.arequest`/:meth:`Model.astream`), so a turn waiting on the model holds no
thread, and the steps between effects run on a small thread pool (a PostgreSQL round trip, a
model called by a policy or a guard must never block the event loop) or, when the caller knows
no step waits on anything but this process's CPU and store (``inline``: the service decides,
colloquy.server.service; a turn whose own steps may wait yields MayWait and goes on on the
threads), on the event loop itself: two hand-overs to a thread and back, and the GIL changing
hands at every SQLite call in between, cost more CPU than the steps (a JSON turn's server CPU:
3.1-4.4 ms on threads, 2.1-2.4 ms on the loop; bench/load.py, issue 16). Why not one async
core with a sync
wrapper: the sync API would then need an event loop per call (and could not run inside one),
and every store would need an async twin; why not the old thread per turn: a waiting turn held a
thread, so a worker held at most ``--threads`` turns in flight (issue 16).

Interruption: when the caller goes away (an asyncio task cancelled, an async stream closed, a
sync stream generator closed, Ctrl-C), the driver stops the model call at once (closing its HTTP
response) and throws :class:`TurnInterrupted` into the turn with the text received so far; the
turn stores that partial reply (``stop_reason`` ``"cancelled"``, usage billed, estimated when the
provider sent none) and re-raises, and the driver then raises the caller's own exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from .errors import ColloquyError, ConversationBusy, ModelError
from .messages import ToolUseBlock
from .models.base import Model, ModelRequest, ModelResponse, TextDelta, TextPiece, ThinkingDelta
from .store.locks import DEFAULT_LOCK_TIMEOUT
from .tools import Tool, run_calls
from .usage import Usage

if TYPE_CHECKING:  # pragma: no cover
    from .chat import Chat, Reply
    from .store.base import StoredMessage
    from .turn_options import TurnOptions

#: Longest pause between two tries of a busy lock by an async caller (seconds): short enough
#: that a queued turn starts soon after the previous one ends, long enough to cost nothing.
MAX_LOCK_POLL = 0.05


@dataclass(frozen=True)
class Acquire:
    """Take the chat's turn gate and the store's per-conversation turn lock; the driver sends
    back a callable that releases both (called from whichever thread ends the turn). The async
    driver waits for a busy one without holding a thread (``store.try_lock``, retried)."""

    chat: Chat


@dataclass(frozen=True)
class CallModel:
    """Call ``model``; with ``stream``, its text deltas (``str``) and thinking deltas
    (:class:`ThinkingDelta`) go to the caller as they arrive. The
    driver sends back the final :class:`ModelResponse` (or throws the call's error, as a
    :class:`ModelError`, or :class:`TurnInterrupted`). The call starts in ``context`` (the
    turn's: its span parents the call's, colloquy.telemetry); ``on_delta`` hears each delta."""

    model: Model
    request: ModelRequest
    stream: bool = False
    context: contextvars.Context | None = None
    on_delta: Callable[[], None] | None = None


@dataclass(frozen=True)
class RunTools:
    """Run the model's tool calls; the driver sends back their tool_result blocks."""

    tools: dict[str, Tool]
    calls: Sequence[ToolUseBlock]
    context: contextvars.Context | None = None


@dataclass(frozen=True)
class Emit:
    """Text for the caller of a streamed turn (a replayed or guarded reply)."""

    text: str


@dataclass(frozen=True)
class MayWait:
    """The turn's next steps may wait on something other than this process's CPU and store (a
    guard's or a title's model call, fact extraction, a policy's embedding or summary): a
    driver running steps on the event loop (``arun(inline=True)``) runs the rest of the turn's
    steps on its threads; the others carry on at once. The driver sends back None."""


Effect = Acquire | CallModel | RunTools | Emit | MayWait
Turn = Generator[Effect, Any, "Reply"]


def steps_may_wait(chat: Chat) -> bool:
    """Whether ``chat``'s turn steps may wait on more than this process's CPU and store, beside
    its context builds (asked before each build: :func:`policy_may_wait`): a guard (a
    moderation model), fact extraction or a title (model calls). The turn then yields MayWait
    at its start."""
    from .continuity import title_model_for

    if chat.guards or chat.extract_facts is not None:
        return True
    conv = chat._conversation
    return (conv is None or conv.title is None) \
        and title_model_for(chat.model, chat.title_model) is not None


def policy_may_wait(chat: Chat, history: Sequence[StoredMessage], options: TurnOptions) -> bool:
    """Whether ``chat``'s policy may wait building from ``history`` (its ``may_wait``; one
    without it is taken to). Asked again before each build of a turn, of the log that build
    sees: the turn's own message or a tool's result may make the log no longer fit."""
    may_wait = getattr(chat.policy, "may_wait", None)
    return may_wait is None or bool(may_wait(chat._context_input(history, options)))


class TurnInterrupted(ColloquyError):
    """Thrown into a turn whose caller went away during an effect: ``text`` is what the model
    had streamed so far (empty for a non-streamed call), ``usage`` what the provider reported
    (None: the turn estimates it). The turn stores the partial reply and re-raises."""

    def __init__(self, text: str = "", usage: Usage | None = None, thinking: str = "") -> None:
        super().__init__("the turn was interrupted by its caller")
        self.text = text
        self.usage = usage
        #: The thinking streamed so far: billed as output (it has no signature, so it is not
        #: stored: no request could carry it back).
        self.thinking = thinking


def model_error(err: Exception, model: Model) -> ColloquyError:
    """A model call's failure as colloquy's error (adapters already raise ModelError; anything
    else a custom model raises is wrapped, so callers see one error tree)."""
    if isinstance(err, ColloquyError):
        return err
    error = ModelError(f"model call failed: {type(err).__name__}: {err}", provider=model.provider)
    error.__cause__ = err
    return error


def _final(response: ModelResponse | None, model: Model) -> ModelResponse:
    if response is None:
        raise ModelError("the model's stream ended without a final message", provider=model.provider)
    return response


# -- the sync driver ---------------------------------------------------------------------------------


def _acquire(chat: Chat) -> Callable[[], None]:
    """The sync driver's locks: block until the turn gate, then the store's lock, are free."""
    from .continuity import turn_lock

    chat._gate.acquire()
    try:
        held = turn_lock(chat.store, chat.session_id)
        held.__enter__()
    except BaseException:
        chat._gate.release()
        raise
    return _releaser(chat, lambda: held.__exit__(None, None, None))


def _try_take(chat: Chat) -> Callable[[], None] | None:
    """The gate and the store's turn lock if both are free right now (their release), else
    None; never waits (``store.try_lock``). In a worker thread: PostgreSQL's try is a round
    trip. A store without ``try_lock`` is waited on here, in the thread, as before it had one."""
    from .continuity import turn_lock

    if not chat._gate.acquire(blocking=False):
        return None
    try:
        try_lock = getattr(chat.store, "try_lock", None)
        if callable(try_lock):
            store_release = try_lock(chat.session_id)
        else:
            held = turn_lock(chat.store, chat.session_id)
            held.__enter__()
            store_release = lambda: held.__exit__(None, None, None)  # noqa: E731
    except BaseException:
        chat._gate.release()
        raise
    if store_release is None:
        chat._gate.release()
        return None
    return _releaser(chat, store_release)


def _releaser(chat: Chat, store_release: Callable[[], Any]) -> Callable[[], None]:
    def release() -> None:
        try:
            store_release()
        finally:
            chat._gate.release()

    return release


def run(turn: Turn) -> Iterator[str | ThinkingDelta | Reply]:
    """Drive a turn with blocking calls: yields the text for the caller, then the Reply.

    Closing this generator (or Ctrl-C) while the model streams interrupts the turn: the
    model's stream is closed at once and the partial reply stored (see the module docstring).
    """
    value: Any = None
    error: BaseException | None = None
    calls = -1  # the turn's model call under way (a delta's TextPiece.call)
    while True:
        try:
            effect = turn.throw(error) if error is not None else turn.send(value)
        except StopIteration as done:
            yield done.value
            return
        value, error = None, None
        parts: list[str] = []
        thoughts: list[str] = []
        try:
            if isinstance(effect, Emit):
                yield effect.text
            elif isinstance(effect, CallModel):
                calls += 1
                value = yield from _call(effect, parts, calls, thoughts)
            elif isinstance(effect, RunTools):
                value = _in(effect.context, run_calls, effect.tools, list(effect.calls))
            elif isinstance(effect, Acquire):
                value = _acquire(effect.chat)
        except (GeneratorExit, KeyboardInterrupt) as gone:
            _interrupt(turn, TurnInterrupted("".join(parts), thinking="".join(thoughts)))
            raise gone from None
        except Exception as e:  # noqa: BLE001 - thrown into the turn, which decides
            error = model_error(e, effect.model) if isinstance(effect, CallModel) else e


def _in(context: contextvars.Context | None, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args) if context is None else context.run(fn, *args)


def _call(effect: CallModel, parts: list[str], call: int, thoughts: list[str]
          ) -> Generator[str | ThinkingDelta, None, ModelResponse]:
    model, request, ctx = effect.model, effect.request, effect.context
    if not effect.stream:
        return _in(ctx, model.request, request)  # type: ignore[no-any-return]
    final: ModelResponse | None = None
    events = model.stream(request)
    try:
        while True:
            try:
                event = _in(ctx, next, events)
            except StopIteration:
                break
            if isinstance(event, TextDelta):
                parts.append(event.text)
                if effect.on_delta is not None:
                    effect.on_delta()
                yield TextPiece(event.text, event.index, call)
            elif isinstance(event, ThinkingDelta):
                thoughts.append(event.thinking)
                yield replace(event, call=call)  # shown apart; the whole block comes last
            else:
                final = event
    finally:  # a closed caller closes the model's stream (and its HTTP response) at once
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return _final(final, model)


def _interrupt(turn: Turn, interruption: TurnInterrupted) -> None:
    """Let the turn store what it has, then end it (it re-raises the interruption)."""
    try:
        turn.throw(interruption)
    except (TurnInterrupted, StopIteration):
        return
    turn.close()  # it asked for more after being interrupted: end it there


# -- the async driver --------------------------------------------------------------------------------


@dataclass
class _Step:
    """One step of the turn, run in a thread: the next effect, the Reply, or an exception."""

    effect: Effect | None = None
    reply: Any = None
    error: BaseException | None = None
    done: bool = False


def _advance(turn: Turn, value: Any, error: BaseException | None, inline: bool = False
             ) -> _Step:
    """Run the turn to its next effect, in a worker thread (or ``inline``, on the loop's). A
    free gate is taken right here (and the store's lock with it), which saves a trip to the
    event loop and back; on a thread, MayWait is answered here too."""
    while True:
        try:
            effect = turn.throw(error) if error is not None else turn.send(value)
        except StopIteration as stop:
            return _Step(reply=stop.value, done=True)
        except BaseException as e:  # noqa: BLE001 - handed to the driver on the event loop
            return _Step(error=e)
        if isinstance(effect, MayWait) and not inline:
            value, error = None, None
            continue
        if not isinstance(effect, Acquire):
            return _Step(effect=effect)
        try:
            value, error = _try_take(effect.chat), None
        except BaseException as e:  # noqa: BLE001 - thrown into the turn
            value, error = None, e
        if value is None and error is None:
            return _Step(effect=effect)  # busy: the event loop waits, holding no thread


@dataclass
class _Async:
    loop: asyncio.AbstractEventLoop
    executor: Executor | None
    #: Steps run on the event loop's thread, not on ``executor`` (see the module docstring).
    inline: bool = False
    #: The caller's context: the turn's first step starts in it (its span parents the turn's).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)

    def interrupted(self) -> TurnInterrupted:
        return TurnInterrupted("".join(self.parts), thinking="".join(self.thoughts))

    async def step(self, turn: Turn, value: Any, error: BaseException | None,
                   shielded: bool = False) -> _Step:
        """Run the turn up to its next effect in a worker thread. A cancellation while a step
        runs waits for that step (it is short) and is re-raised after it. Once the caller is
        gone, steps run shielded: the turn must store what it has even inside a cancelled
        scope that cancels every await (anyio's, as Starlette's streaming responses use).
        Inline, the step runs at once on the loop's thread: nothing can interrupt it."""
        if self.inline:
            return self.context.run(_advance, turn, value, error, True)
        future = self.loop.run_in_executor(self.executor, self.context.run, _advance, turn,
                                           value, error)
        if shielded:
            with anyio.CancelScope(shield=True):
                return await future
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                outcome = await future
            raise _CancelledAfter(outcome) from None

    async def acquire(self, chat: Chat) -> Callable[[], None]:
        """Wait for a busy conversation without holding a thread: sleep on the loop, try
        again (``_try_take``: on the loop's thread inline, else on a thread), with a growing
        pause; :class:`ConversationBusy` after the store's usual timeout. (The service queues a conversation's turns on an
        asyncio lock first, so this is another process's turn, or another Chat's.)"""
        deadline = self.loop.time() + DEFAULT_LOCK_TIMEOUT
        pause = 0.001
        while True:
            await asyncio.sleep(pause)
            release = _try_take(chat) if self.inline else await self._take(chat)
            if release is not None:
                return release
            if self.loop.time() >= deadline:
                raise ConversationBusy(chat.session_id, DEFAULT_LOCK_TIMEOUT)
            pause = min(pause * 2, MAX_LOCK_POLL)

    async def _take(self, chat: Chat) -> Callable[[], None] | None:
        """``_try_take`` on a thread (a PostgreSQL try is a round trip); a lock it takes after
        the caller was cancelled is released there, never left behind."""
        taking = self.loop.run_in_executor(self.executor, _try_take, chat)
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):  # never leave a lock taken behind us
                with contextlib.suppress(Exception):
                    late = await taking
                    if late is not None:
                        await self.loop.run_in_executor(self.executor, late)
            raise


async def _started(step: Any, context: contextvars.Context | None) -> Any:
    """Await ``step`` (a coroutine or an async generator's next step) as a task in
    ``context``: what it sets up first (the call's span, colloquy.telemetry) belongs to the
    turn. Cancelling the caller cancels the task (an awaited task takes the cancellation)."""
    if context is None:
        return await step

    async def run() -> Any:
        return await step

    return await asyncio.get_running_loop().create_task(run(), context=context)


class _CancelledAfter(BaseException):
    """A cancellation that arrived while a step ran; carries that step's outcome."""

    def __init__(self, outcome: _Step) -> None:
        super().__init__()
        self.outcome = outcome


async def arun(turn: Turn, executor: Executor | None = None, *, inline: bool = False
               ) -> AsyncIterator[str | ThinkingDelta | Reply]:
    """Drive a turn on the event loop: yields the text for the caller, then the Reply. Its
    steps run on ``executor`` (None: the loop's default), or with ``inline`` on the loop's own
    thread: only for turns none of whose steps waits (see the module docstring); tools
    (RunTools) run on ``executor`` either way.

    Cancelling the task that iterates this (or closing the iterator) interrupts the turn: the
    model call is stopped at once, the partial reply stored, and the cancellation re-raised.
    """
    driver = _Async(asyncio.get_running_loop(), executor, inline)
    calls = -1  # the turn's model call under way (a delta's TextPiece.call)
    value: Any = None
    error: BaseException | None = None
    gone: BaseException | None = None  # the caller's CancelledError or GeneratorExit
    while True:
        try:
            outcome = await driver.step(turn, value, error, shielded=gone is not None)
        except _CancelledAfter as late:
            outcome, gone = late.outcome, gone or asyncio.CancelledError()
        value, error = None, None
        if outcome.done:
            if gone is not None:
                raise gone
            yield outcome.reply
            return
        if outcome.error is not None:
            if gone is not None and isinstance(outcome.error, TurnInterrupted):
                raise gone
            raise outcome.error
        effect = outcome.effect
        if gone is not None:  # the caller left: interrupt the turn at this effect
            error = driver.interrupted()
            continue
        driver.parts, driver.thoughts = [], []
        try:
            if isinstance(effect, Emit):
                yield effect.text
            elif isinstance(effect, CallModel):
                calls += 1
                if effect.stream:
                    final: ModelResponse | None = None
                    events = effect.model.astream(effect.request)
                    try:
                        # The first step starts the call (and its span) in the turn's context.
                        event = await _started(events.__anext__(), effect.context)
                        while True:
                            if isinstance(event, TextDelta):
                                driver.parts.append(event.text)
                                if effect.on_delta is not None:
                                    effect.on_delta()
                                yield TextPiece(event.text, event.index, calls)
                            elif isinstance(event, ThinkingDelta):
                                driver.thoughts.append(event.thinking)
                                yield replace(event, call=calls)
                            else:
                                final = event
                            event = await events.__anext__()
                    except StopAsyncIteration:
                        pass
                    finally:  # closes the model's HTTP response at once
                        aclose = getattr(events, "aclose", None)
                        if aclose is not None:
                            with anyio.CancelScope(shield=True):
                                await aclose()
                    value = _final(final, effect.model)
                else:
                    value = await _started(effect.model.arequest(effect.request), effect.context)
            elif isinstance(effect, RunTools):
                value = await driver.loop.run_in_executor(
                    executor, _in, effect.context, run_calls, effect.tools, list(effect.calls))
            elif isinstance(effect, Acquire):
                value = await driver.acquire(effect.chat)
            elif isinstance(effect, MayWait):
                driver.inline = False  # the rest of the turn's steps: on the threads
        except (asyncio.CancelledError, GeneratorExit) as e:
            gone = e
            error = driver.interrupted()
        except Exception as e:  # noqa: BLE001 - thrown into the turn, which decides
            error = model_error(e, effect.model) if isinstance(effect, CallModel) else e

