"""Long-lived conversation logs out of the cyclic garbage collector's way.

Why: a Chat holds its whole log for as long as it lives (a resumed 10,000-turn conversation is
20,000 messages, each a handful of small objects: the message, its blocks, their dicts), and
CPython's full collections walk every tracked object each time, though a log holds no
reference cycles. bench/turns.py measured full-collection pauses of 0.5-1.9 s at 10,000 turns
(load 8-12 on a shared 2-core machine) and ~1 ms per turn of amortised collector time.

So each time the Chats of a process have taken in :data:`FREEZE_EVERY` more messages (loaded
from the store or appended), :func:`took_in` collects the young generations (so fresh cyclic
garbage is not kept) and calls :func:`gc.freeze`: everything alive then moves to the permanent
generation, which full collections skip. Frozen objects are still freed by reference counting
as usual when dropped (a deleted conversation's log, a Chat leaving a cache). A reference cycle
frozen with the live objects is not: one alive at the freeze that died later (a turn in flight
then: its task, its frames, an exception's traceback, its request's text), or one that had
reached the oldest generation and died since the last full collection. So every
:data:`RECLAIM_EVERY` freezes, the freeze unfreezes first and collects everything once (one
full walk per 32,000 messages taken in): without it a service kept every freeze's garbage for
good, and with it the text of conversations deleted since (attack7 F3). ``gc.get_objects()``
does not list frozen objects: call ``gc.unfreeze()`` first to see every object.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
import threading
from collections.abc import Callable

#: Messages the process's Chats take in between two freezes (0: never freeze).
FREEZE_EVERY = 2_000
#: Every this many freezes, a freeze unfreezes and collects everything first: the garbage kept
#: frozen is at most that of this many freezes (module docstring).
RECLAIM_EVERY = 16

_lock = threading.Lock()
_freezing = threading.Lock()
_pending = 0
#: Freezes since the last collection of everything.
_freezes = 0


def took_in(messages: int) -> None:
    """Count ``messages`` that a Chat now holds (loaded or appended); freeze what the process
    holds once :data:`FREEZE_EVERY` have come in since the last freeze (module docstring)."""
    global _pending
    if FREEZE_EVERY <= 0 or messages <= 0:
        return
    with _lock:
        _pending += messages
        if _pending < FREEZE_EVERY:
            return
        _pending = 0
    freeze()


def freeze() -> None:
    """Collect, then freeze what is alive (module docstring): the young generations, or every
    object each :data:`RECLAIM_EVERY` freezes. A freeze already running in another thread
    stands for this one."""
    global _freezes
    if not _freezing.acquire(blocking=False):
        return
    try:
        _freezes += 1
        if _freezes >= RECLAIM_EVERY:
            _freezes = 0
            gc.unfreeze()  # cycles that died frozen are collected with the rest
            gc.collect()
        else:
            gc.collect(1)  # a full collection is what the freeze avoids
        gc.freeze()
    finally:
        _freezing.release()


def reclaim() -> None:
    """Free now what forgotten data left behind: collect everything, the frozen objects included
    (a reference cycle that died frozen holds its text until then), freeze again what is alive
    if the process was freezing, and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``), so they no longer hold the freed bytes. Called after a sweep forgot
    conversations deleted elsewhere (colloquy.caches.sweep_deleted). What it cannot do: memory
    freed but not returned (CPython's small-object arenas, partly used pages) keeps its old
    bytes until reused; the README (Deletion) says so. A full collection: one walk of every
    object (2.45 s at 525,000 objects under load 13, see the README)."""
    with _freezing:
        frozen = gc.get_freeze_count()
        if frozen:
            gc.unfreeze()
        gc.collect()
        if frozen:
            gc.freeze()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list[Callable[[int], int] | None] = []


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on another C library or system."""
    if not _TRIM:
        fn = None
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):  # pragma: no cover - an unusual libc
                fn = None
        _TRIM.append(fn)
    return _TRIM[0]


__all__ = ["FREEZE_EVERY", "RECLAIM_EVERY", "freeze", "reclaim", "took_in"]
