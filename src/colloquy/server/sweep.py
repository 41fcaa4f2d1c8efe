"""The periodic sweep that bounds how long a conversation deleted by *another* process stays in
this worker's memory.

A deletion made here reaches the in-process caches at once (colloquy.caches.forget_cached), and
one made elsewhere reaches them when work in flight touches the conversation (store/owner.py).
A conversation nobody touches again (its user deleted by ``colloquy users delete``, another
``serve`` worker or ``purge`` from cron) would otherwise stay cached until evicted: the service
keeps up to ``ServerSettings.cached_chats`` Chats with their loaded logs. So every
``ServerSettings.sweep_interval`` seconds the service asks the store, in one query, which of the
conversations its caches hold still exist, and forgets the others in the caches registered
with that store (:func:`colloquy.caches.sweep_deleted`; one registry per store, so two
services over two stores in one process never ask about, nor evict, each other's). The cost is one query per interval per worker, none
per turn; a deleted user's messages leave a worker's memory within about one interval. A
sweep that forgot something also empties the process-wide text memos (colloquy.caches.TextMemo),
collects everything, frozen garbage included, and trims the C heap
(:func:`colloquy.gc_freeze.reclaim`): no live object refers to the text any more; freed memory
keeps its bytes until reused (README, Deletion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..caches import ConversationsChecker, sweep_deleted

log = logging.getLogger(__name__)

#: The default interval between sweeps, in seconds: a deleted user's data lives at most about
#: this long in another worker's memory, at the cost of one small query per worker per interval.
SWEEP_INTERVAL = 5.0


class Sweeper:
    """Runs :func:`sweep_deleted` over ``store`` every ``interval`` seconds on the event loop
    (the query itself on ``run``, the service's step threads) between :meth:`start` and
    :meth:`stop`. ``interval`` 0 or less: never."""

    def __init__(self, store: ConversationsChecker, interval: float,
                 run: Callable[..., Awaitable[Any]]) -> None:
        self.store = store
        self.interval = interval
        self._run = run
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                gone = await self._run(sweep_deleted, self.store)
            except Exception:  # a database hiccup must not end the sweeps; the next one retries
                log.warning("sweeping deleted conversations failed", exc_info=True)
                continue
            if gone:
                log.debug("forgot %d conversations deleted elsewhere", len(gone))


__all__ = ["SWEEP_INTERVAL", "Sweeper"]
