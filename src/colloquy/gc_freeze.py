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
as usual when dropped (a deleted conversation's log, a Chat leaving a cache); only a reference
cycle that was alive when frozen and became garbage later is not collected, a small, bounded
cost that the shorter pauses pay for. ``gc.get_objects()`` does not list frozen objects: call
``gc.unfreeze()`` first to see every object.
"""

from __future__ import annotations

import gc
import threading

#: Messages the process's Chats take in between two freezes (0: never freeze).
FREEZE_EVERY = 2_000

_lock = threading.Lock()
_pending = 0


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
    gc.collect(1)
    gc.freeze()


__all__ = ["FREEZE_EVERY", "took_in"]
