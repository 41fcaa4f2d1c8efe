"""In-process caches of conversation data (recall indexes, summary caches, the service's
cached chats, the offline models' record of requests), and how they are told to forget a
conversation.

A deleted conversation must leave nothing behind in this process's memory either, not just on
disk: every store's ``delete_conversation``, ``users delete`` and ``purge`` call
:func:`forget_cached`, and so does a store that refuses a write because its conversation is gone
(store/owner.py), which is how a deletion made by *another* process reaches the caches here
as soon as work in flight notices it.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable
from typing import Any

#: Objects that keep conversation data in this process's memory (recall indexes, summary
#: caches): a deleted conversation must leave nothing behind here either, not just on disk.
_CACHES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_CACHE_KEYS = itertools.count()
_CACHES_LOCK = threading.Lock()


def register_cache(cache: Any) -> None:
    """Register an object with a ``forget_conversations(ids)`` method; it is called whenever
    conversations are deleted (by any store, or by ``users delete`` and ``purge``). Held weakly."""
    with _CACHES_LOCK:
        _CACHES[next(_CACHE_KEYS)] = cache


def forget_cached(conversation_ids: Iterable[str]) -> None:
    """Drop what in-memory caches hold about these conversations."""
    ids = set(conversation_ids)
    if not ids:
        return
    with _CACHES_LOCK:
        caches = list(_CACHES.values())
    for cache in caches:
        cache.forget_conversations(ids)
