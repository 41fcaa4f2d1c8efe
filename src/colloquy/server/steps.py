"""The pool that runs the turns' short steps: as few threads as keep the work moving.

A turn's steps (store transactions, the context policy, guards, side calls) run on a thread
pool so that nothing that may wait (a SQLite busy wait, a PostgreSQL round trip, a summary or
title from a real model) blocks the event loop (colloquy.effects). But Python runs one thread
at a time: threads that *compute* only take turns with the GIL, and each hand-over between
them (at every SQLite call, which releases it) is a futex wake and a context switch. With 16
threads for 50 users' turns, a JSON turn on the echo model cost 3.0 ms of server CPU; with 2,
2.3 ms (``bench/load.py``, load average 6, issue 16). So the pool keeps ``core`` threads
that are not blocked: a step running for longer than :data:`STUCK` is waiting (on the network,
a lock, a model making a title or a summary), not computing (a turn's steps take a millisecond
or so of CPU), and while work is queued a thread is added for each such step, up to
``max_threads``. Threads added that way leave after :data:`IDLE_EXIT` without work. The worst
case is the plain pool of ``max_threads`` it replaces.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Where a turn's steps may run (ServerSettings.steps, ``colloquy serve --steps``): ``auto``
#: runs them on the event loop when the store never waits on a network (colloquy.server.
#: service.steps_stay_local) until a turn says its steps may wait (MayWait); ``threads``
#: always on this pool.
STEPS = ("auto", "threads")

#: Threads always ready (two: one step may read while another writes).
CORE_THREADS = 2
#: How often a backlog is looked at, seconds.
TICK = 0.01
#: A step running this long is taken to be waiting, not computing, seconds (a turn's steps
#: take about a millisecond of CPU; a loaded machine stretches that, not to 50 ms).
STUCK = 0.05
#: An added thread leaves after this long without work, seconds.
IDLE_EXIT = 1.0

_Item = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class StepPool(Executor):
    """An :class:`~concurrent.futures.Executor` of ``core`` threads growing to ``max_threads``
    while its threads are blocked (see the module docstring). Thread-safe."""

    def __init__(self, max_threads: int, *, core: int = CORE_THREADS,
                 name: str = "colloquy-step") -> None:
        if max_threads < 1:
            raise ValueError(f"threads must be at least 1, not {max_threads}")
        self.max_threads = max_threads
        self.core = min(core, max_threads)
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._serial = 0
        self._watching = False
        self._closed = False
        #: worker number -> when its current step started (0.0: none running)
        self._since: dict[int, float] = {}

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return self._threads

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new steps after shutdown")
            self._queue.put((future, fn, args, kwargs))
            if self._threads < self.core:
                self._start(extra=False)
            elif self._idle == 0 and not self._watching and self._threads < self.max_threads:
                self._watching = True
                threading.Thread(target=self._watch, name=f"{self._name}-watch",
                                 daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in range(self._threads):
                self._queue.put(None)
        if wait:
            deadline = time.monotonic() + 60
            while self._threads and time.monotonic() < deadline:
                time.sleep(0.01)

    # -- threads --------------------------------------------------------------------------------

    def _start(self, extra: bool) -> None:
        """One more worker (the caller holds the lock)."""
        self._threads += 1
        self._serial += 1
        self._since[self._serial] = 0.0
        threading.Thread(target=self._work, args=(self._serial, extra), daemon=True,
                         name=f"{self._name}_{self._serial}").start()

    def _work(self, me: int, extra: bool) -> None:
        since = self._since
        while True:
            with self._lock:
                self._idle += 1
            try:
                item = self._queue.get(timeout=IDLE_EXIT) if extra else self._queue.get()
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    self._threads -= 1
                    del since[me]
                return
            with self._lock:
                self._idle -= 1
                if item is None:
                    self._threads -= 1
                    del since[me]
                    return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            since[me] = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(e)
            else:
                future.set_result(result)
            finally:
                since[me] = 0.0
            del item, future, fn, args, kwargs

    def _watch(self) -> None:
        """While work is queued and fewer than ``core`` threads are free of a step running
        longer than :data:`STUCK`, add a thread each tick; stop after :data:`IDLE_EXIT`
        without such a backlog."""
        quiet = 0.0
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                backlog = not self._queue.empty() and not self._idle
                if self._closed or self._threads >= self.max_threads or (
                        not backlog and quiet >= IDLE_EXIT):
                    self._watching = False
                    return
                if not backlog:
                    quiet += TICK
                    continue
                quiet = 0.0
                stuck = sum(1 for t in self._since.values() if t and now - t > STUCK)
                if self._threads - stuck < self.core:
                    self._start(extra=True)


class LoopLag:
    """Whether the event loop runs behind: while turns come, a heartbeat every :data:`BEAT`
    seconds notes how late it ran; ``behind`` from a beat later than :data:`BEHIND` until the
    beats have come within half of it for :data:`BEHIND` seconds.

    Why: steps run on the loop (ServerSettings.steps) cost less CPU (no hand-over to a thread
    and back), but only the loop's thread runs them; in a burst the loop falls behind while a
    second core idles, and the threads, whose SQLite and socket work runs outside the GIL,
    clear the backlog sooner. bench/load.py, one worker on 2 cores, 1,000 users x 2 turns on a
    10 s model, alternated runs at a load of about 2 (issue 16): p50 11.7-12.1 s with the
    steps always on the loop, 11.0-11.3 s always on threads, 10.9-11.2 s with this; a JSON
    turn's CPU stays that of the loop (2.1-2.4 ms against 3.1-4.4 ms on threads) while the loop
    keeps up. The heartbeat stops after :data:`IDLE` seconds without a turn (an idle server
    never wakes)."""

    def __init__(self) -> None:
        self.behind = False
        #: The latest beat's lateness, seconds.
        self.late = 0.0
        self._loop: Any = None
        self._seen = 0.0  # when a turn last asked (loop time)
        self._calm = 0.0  # the last beat later than BEHIND / 2 (loop time)

    def watch(self) -> bool:
        """Note a turn starting on the running loop (starting the heartbeat if it is not
        beating); return whether the loop is behind."""
        loop = asyncio.get_running_loop()
        self._seen = loop.time()
        if self._loop is not loop:
            self._loop = loop
            self._beat(loop, self._seen + BEAT)
        return self.behind

    def _beat(self, loop: Any, due: float) -> None:
        def beat() -> None:
            now = loop.time()
            self.late = now - due
            if self.late > BEHIND / 2:
                self._calm = now  # not calm: the calm period starts again
                if self.late > BEHIND:
                    self.behind = True
            elif now - self._calm >= BEHIND:
                self.behind = False
            if self._loop is not loop or now - self._seen > IDLE:
                self._loop, self.behind = None, False  # idle: the next turn starts it again
                return
            self._beat(loop, now + BEAT)

        loop.call_at(due, beat)


#: The heartbeat's period, seconds.
BEAT = 0.01
#: A loop whose heartbeat comes later than this is behind, seconds (a JSON turn's steps take
#: about a millisecond of CPU: a backlog of a few hundred of them).
BEHIND = 0.25
#: Seconds without a turn after which the heartbeat stops.
IDLE = 1.0
