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

**One registry per store.** A conversation id means something only in its store, and one
process may serve several stores (two apps over two databases, a test suite). So each store
object has its own :class:`CacheRegistry` (:func:`registry_of`) holding the caches that hold
*its* conversations (the service over it, the models and policy parts used with it), and a
process-wide one holds the caches registered without a store. A deletion in store A forgets in
A's registry and the process-wide one, never in B's; B's sweep asks B only about the ids B's
caches hold, never A's. A cache used with two stores (one policy object given to both) is in
both registries; it is keyed by conversation id only, so it may answer both with its ids.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from .gc_freeze import reclaim

class ConversationsChecker(Protocol):
    """What :func:`sweep_deleted` needs of a store (every shipped store has it)."""

    def existing_conversations(self, ids: Collection[str]) -> set[str]: ...


class CacheRegistry:
    """Objects that keep conversation data in this process's memory, held weakly: each has a
    ``forget_conversations(ids)`` method, and a cache keyed by conversation also has
    ``cached_conversations() -> set[str]`` (the ids it holds, for :meth:`sweep`)."""

    def __init__(self) -> None:
        self._caches: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def register(self, cache: Any) -> None:
        """Add ``cache`` (again: no effect; keyed by identity while it lives)."""
        with self._lock:
            self._caches[id(cache)] = cache

    def caches(self) -> list[Any]:
        with self._lock:
            return list(self._caches.values())

    def forget(self, ids: set[str]) -> None:
        for cache in self.caches():
            cache.forget_conversations(ids)

    def held(self) -> set[str]:
        """The ids of the conversations these caches hold (a copy)."""
        held: set[str] = set()
        for cache in self.caches():
            ids = getattr(cache, "cached_conversations", None)
            if ids is not None:
                held.update(ids())
        return held


#: The caches registered without a store (a policy part or model never used with one yet).
_PROCESS = CacheRegistry()
#: Each store object's registry (see the module docstring); goes with its store.
_BY_STORE: weakref.WeakKeyDictionary[Any, CacheRegistry] = weakref.WeakKeyDictionary()
_BY_STORE_LOCK = threading.Lock()


def registry_of(store: Any) -> CacheRegistry:
    """``store``'s registry (created on first use); the process-wide one for None, or for a
    store object that cannot be referenced weakly (a plugin's, with ``__slots__``)."""
    if store is None:
        return _PROCESS
    with _BY_STORE_LOCK:
        try:
            registry = _BY_STORE.get(store)
            if registry is None:
                registry = _BY_STORE[store] = CacheRegistry()
        except TypeError:
            return _PROCESS
        return registry


def register_cache(cache: Any, store: Any = None) -> None:
    """Register an object with a ``forget_conversations(ids)`` method (see
    :class:`CacheRegistry`): it is called whenever conversations of ``store`` are deleted (by
    the store, or by ``users delete`` and ``purge``), and :func:`sweep_deleted` over ``store``
    asks about the ids it holds. Without a store: told of every deletion in the process, swept
    by none. Held weakly."""
    registry_of(store).register(cache)


def forget_cached(conversation_ids: Iterable[str], store: Any = None) -> None:
    """Drop what in-memory caches hold about these conversations of ``store``: its registry's
    caches and those registered without a store. ``store`` None (the store is not known):
    every registry's, as a deleted conversation must leave nothing behind."""
    ids = set(conversation_ids)
    if not ids:
        return
    if store is None:
        with _BY_STORE_LOCK:
            registries = [_PROCESS, *_BY_STORE.values()]
    else:
        registries = [_PROCESS, registry_of(store)]
    for registry in registries:
        registry.forget(ids)


def sweep_deleted(store: ConversationsChecker) -> set[str]:
    """Forget the conversations that ``store``'s caches (:func:`registry_of`) hold and
    ``store`` no longer has (deleted by any process): one store query
    (``existing_conversations``) over those ids only, none when nothing is cached. Returns the
    ids forgotten."""
    held = registry_of(store).held()
    if not held:
        return set()
    gone = held - store.existing_conversations(held)
    if gone:
        forget_cached(gone, store)
        reclaim()  # the garbage, frozen cycles included, and the C heap's free pages
    return gone


class TextMemo:
    """A process-wide memo that holds text or messages but not which conversation they came
    from (a token estimate keyed by text, by a message's identity): it forgets everything
    whenever any conversation is forgotten, since it cannot tell which entries were the
    deleted ones. Made by :func:`text_memo`."""

    def __init__(self, clear: Callable[[], None]) -> None:
        self._clear = clear

    def forget_conversations(self, ids: set[str]) -> None:
        self._clear()


def text_memo(clear: Callable[[], None]) -> TextMemo:
    """Register a process-wide memo emptied by ``clear`` (see :class:`TextMemo`); keep the
    returned object (the registry holds it weakly)."""
    memo = TextMemo(clear)
    register_cache(memo)
    return memo
