"""Turns in flight in one worker: the admission limit (back-pressure) and the end of a turn
whose client went away.

Why a limit at all: a turn waiting on the model holds no thread (see colloquy.effects), so
nothing but memory bounds how many a worker accepts; past the limit the service answers 503 with
``Retry-After`` at once, so an overloaded worker sheds load visibly instead of queueing without
bound (a client or load balancer retries elsewhere or later). The default is sized by memory:
:data:`TURN_BYTES` per turn in flight (measured by ``bench/inflight.py``) against a share of the
machine's memory.

Why cancel on disconnect: a client that closes its connection no longer reads the reply, but
the model would go on generating (and billing) it. Starlette's streaming responses already
cancel their body on a disconnect; a JSON turn is run as a task of its own that a watcher of the
connection cancels, and the turn stores what it has (colloquy.effects).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

from .errors import ClientDisconnected, Overloaded

T = TypeVar("T")

#: Memory one turn in flight costs a worker, bytes: its task, request and Chat state, the HTTP
#: connection and buffers (bench/inflight.py measures it; rounded up).
TURN_BYTES = 64 * 1024
#: The share of the machine's memory the default limit lets turns in flight take.
MEMORY_SHARE = 1 / 8
#: Bounds of the default limit, whatever the machine's memory.
MIN_DEFAULT, MAX_DEFAULT = 1_000, 20_000


def default_max_inflight(memory_bytes: int | None = None) -> int:
    """The default ``--max-inflight``: :data:`MEMORY_SHARE` of the machine's memory divided by
    :data:`TURN_BYTES`, within [:data:`MIN_DEFAULT`, :data:`MAX_DEFAULT`]."""
    if memory_bytes is None:
        try:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
            memory_bytes = 2 * 1024**3
    return max(MIN_DEFAULT, min(MAX_DEFAULT, int(memory_bytes * MEMORY_SHARE) // TURN_BYTES))


#: After a shutdown has cut the turns in flight, how long it waits for them to store what they
#: have (a store transaction each: milliseconds) before the process exits.
STORE_GRACE = 10.0


class Ticket:
    """One admitted turn; :meth:`release` (idempotent) frees its place."""

    __slots__ = ("_owner", "_released")

    def __init__(self, owner: InFlight) -> None:
        self._owner = owner
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner.count -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class InFlight:
    """Counts the worker's turns in flight (on its event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_inflight must be at least 1, not {limit}")
        self.limit = limit
        self.count = 0

    async def settled(self, grace: float = STORE_GRACE) -> None:
        """Wait (at most ``grace`` seconds) until no turn is in flight: at shutdown, the turns
        the server cut store their partial replies meanwhile (colloquy.effects)."""
        deadline = asyncio.get_running_loop().time() + grace
        while self.count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    @property
    def full(self) -> bool:
        """Whether :meth:`admit` would refuse a turn now."""
        return self.count >= self.limit

    def admit(self) -> Ticket:
        """A place for one more turn, or :class:`Overloaded` (503, Retry-After) at once."""
        if self.full:
            raise Overloaded(f"this worker has {self.count} turns in flight, its limit "
                             "(serve --max-inflight); retry shortly", retry_after=1.0)
        self.count += 1
        return Ticket(self)


async def cancel_on_disconnect(receive: Any, work: Awaitable[T]) -> T:
    """Await ``work`` as a task of its own, cancelled if the client disconnects meanwhile
    (``receive`` is the request's ASGI receive: after the body it answers only
    ``http.disconnect``); raises :class:`ClientDisconnected` then."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone and task.cancelled():
            raise ClientDisconnected("the client disconnected; the partial reply is stored") from None
        if not task.done():  # we were cancelled ourselves (a shutdown): the turn goes with us,
            task.cancel()    # once it has stored what it has
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await task
        raise
    finally:
        watcher.cancel()
