"""In-process caches of conversation data (recall indexes, summary caches, the service's
cached chats, the offline models' record of requests), and how they are told to forget a
conversation.

A deleted conversation must leave nothing behind in this process's memory either, not just on
disk: every store's ``delete_conversation``, ``users delete`` and ``purge`` call
:func:`forget_cached`, and so does a store that refuses a write because its conversation is gone
(store/owner.py), which is how a deletion made by *another* process reaches the caches here
as soon as work in flight notices it.

Work in flight is not enough: a conversation deleted by another process (``colloquy users
delete``, another ``serve`` worker, ``purge`` from cron) that no turn touches again would stay
cached here until evicted. So :func:`sweep_deleted` asks the store, in one query, which of the
conversations the caches hold still exist, and forgets the rest; ``colloquy serve`` runs it
every ``ServerSettings.sweep_interval`` seconds (colloquy.server.service), which bounds how long
a deleted user's data lives in a serving process.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Collection, Iterable
from typing import Any, Protocol

#: Objects that keep conversation data in this process's memory (recall indexes, summary
#: caches): a deleted conversation must leave nothing behind here either, not just on disk.
_CACHES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_CACHE_KEYS = itertools.count()
_CACHES_LOCK = threading.Lock()


class ConversationsChecker(Protocol):
    """What :func:`sweep_deleted` needs of a store (every shipped store has it)."""

    def existing_conversations(self, ids: Collection[str]) -> set[str]: ...


def register_cache(cache: Any) -> None:
    """Register an object with a ``forget_conversations(ids)`` method; it is called whenever
    conversations are deleted (by any store, or by ``users delete`` and ``purge``). Held weakly.

    A cache keyed by conversation also has ``cached_conversations() -> set[str]`` (the ids it
    holds), so that :func:`sweep_deleted` finds those deleted by another process."""
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


def cached_conversations() -> set[str]:
    """The ids of the conversations the registered caches hold (a copy)."""
    with _CACHES_LOCK:
        caches = list(_CACHES.values())
    held: set[str] = set()
    for cache in caches:
        ids = getattr(cache, "cached_conversations", None)
        if ids is not None:
            held.update(ids())
    return held


def sweep_deleted(store: ConversationsChecker) -> set[str]:
    """Forget, in every registered cache, the conversations cached here that ``store`` no
    longer has (deleted by any process): one store query (``existing_conversations``),
    none when nothing is cached. Returns the ids forgotten."""
    held = cached_conversations()
    if not held:
        return set()
    gone = held - store.existing_conversations(held)
    forget_cached(gone)
    return gone
