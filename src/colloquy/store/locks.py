"""Per-conversation turn locks: one turn at a time on a conversation, across threads and processes.

Why a lock for the whole turn and not only optimistic versioning: a turn writes twice (the user's
message first, so a failed call never loses it; the reply after the model call). If two devices
send at once, versioning alone would still let their writes interleave (user, user, reply,
reply) or force one of them to throw away a reply that was already paid for. Holding a lock per
conversation from "read the log" to "store the reply" serialises whole turns; ``expected_seq``
on each append stays as the backstop against writers that do not take the lock.

Why these mechanisms: the lock must vanish when its holder dies (SIGKILL, power loss of a
client machine), or a crashed process would block the conversation forever.

* SQLite: POSIX byte-range locks (``fcntl.lockf``) on a sidecar file ``<db>.locks``, one byte
  per conversation (a hash of its id picks the byte). The kernel drops them when the process
  dies. SQLite's own write lock is *not* used: it is database-wide and would stall every other
  conversation during a slow model call. SQLite is one machine's database, so a kernel lock is
  enough; PostgreSQL is the multi-machine store.
* PostgreSQL: session-level advisory locks, all of a store's on one dedicated connection (see
  ``pg_locks.py``); the server drops them when that connection closes.
* Memory: a threading lock per conversation.

Fencing: a lock can be lost while its holder still runs. A PostgreSQL advisory lock lives as
long as its session: when the server restarts, or the connection holding the locks drops, the
server frees them while the turns that took them go on (their model calls are in flight), and
another process's turn may take the conversation. (A SQLite byte lock cannot be lost while its
process lives: one descriptor per file per process, closed never; only a ``<db>.locks`` file
deleted or replaced under running processes would let two of them lock "the same" byte.) So each
turn, once it holds the lock, writes a fresh token, its *fence*, into the conversation's record
(``claim_turn``), and every append of the turn passes it: the append's UPDATE of the record
(which locks the row) compares it, and a turn whose fence was replaced by a later turn's raises
:class:`~colloquy.errors.TurnLockLost` and stores nothing more. The check is in the write's own
transaction, so there is no window between check and commit; a lost lock that no other turn
took in between (the usual server restart) leaves the fence as it was, and the turn finishes.

Two ways to take a lock, on every store (:class:`TurnLocks`):

* ``try_lock(conversation_id)`` never waits: it returns a *release* callable, or None when
  another turn holds the conversation. The release may be called from any thread, and more than
  once (the second call does nothing), so an asyncio service can take a lock in one task and
  free it from a worker thread.
* ``lock(conversation_id, timeout)`` is a context manager that waits: first in this process's
  queue for the key (a threading lock, so waiting threads of one process do not poll), then by
  polling the cross-process lock with a growing pause (0.5 ms doubling to 20 ms).

Why not the ``filelock`` package (used elsewhere, e.g. ``serve``'s metrics directory): it locks
whole files, so a lock per conversation would need a lock file per conversation (files never
safely deleted while another process may wait on them) or a fixed set of shared files (unrelated
conversations queueing behind each other); one byte per conversation in one file has neither.

POSIX record locks belong to the *process*, not to a file descriptor or thread, so within one
process a per-key threading lock comes first, and all stores in a process on one database file
share one descriptor (closing any descriptor of a file would drop all of the process's locks).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConversationBusy
from ..files import FILE_MODE

#: How long a turn waits for another turn on the same conversation before giving up. A turn
#: includes a model call, so this is generous.
DEFAULT_LOCK_TIMEOUT = 300.0
#: Frees a held lock; safe to call from any thread, and more than once.
Release = Callable[[], None]
_FIRST_PAUSE, _MAX_PAUSE = 0.0005, 0.02

try:  # pragma: no cover - platform dependent
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAVE_FCNTL = False
    import msvcrt


def lock_key(conversation_id: str, namespace: str = "") -> int:
    """A stable 63-bit integer for a conversation id (advisory lock key / byte offset)."""
    digest = hashlib.blake2b(f"{namespace}\0{conversation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def once(*steps: Callable[[], None]) -> Release:
    """A release that runs ``steps`` in order the first time it is called, never again."""
    guard = threading.Lock()
    done = False

    def release() -> None:
        nonlocal done
        with guard:
            if done:
                return
            done = True
        for step in steps:
            step()

    return release


class ThreadLocks:
    """One lock per key within a process; entries are dropped when no one holds or waits.

    ``threading.Lock`` (not ``RLock``) on purpose: any thread may release it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    def acquire(self, key: str, timeout: float | None = None) -> Release | None:
        """Take ``key``'s lock, waiting at most ``timeout`` seconds (None: not at all)."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        got = lock.acquire(blocking=False) if timeout is None else lock.acquire(timeout=max(0.0, timeout))
        if not got:
            self._leave(key)
            return None
        return once(lock.release, lambda: self._leave(key))

    def _leave(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @contextmanager
    def hold(
        self, key: str, timeout: float = DEFAULT_LOCK_TIMEOUT, name: str | None = None
    ) -> Iterator[None]:
        """Hold the lock of ``key``; ``name`` is the conversation named in a timeout error."""
        release = self.acquire(key, timeout)
        if release is None:
            raise ConversationBusy(name or key, timeout)
        try:
            yield
        finally:
            release()


#: Tries a cross-process lock without waiting: a release, or None when another process holds it.
TryOuter = Callable[[str], Release | None]


class TurnLocks:
    """The turn locks of one store: a per-key threading lock in this process, then (optionally)
    a cross-process lock tried by ``outer``. ``key`` maps a conversation id to the in-process
    key (two ids whose cross-process locks collide must share it)."""

    def __init__(self, outer: TryOuter | None = None, key: Callable[[str], str] = str) -> None:
        self.threads = ThreadLocks()
        self._outer = outer
        self._key = key

    def _with_outer(self, conversation_id: str, inner: Release) -> Release | None:
        if self._outer is None:
            return inner
        try:
            outer = self._outer(conversation_id)
        except BaseException:
            inner()
            raise
        if outer is None:
            return None
        return once(outer, inner)

    def try_lock(self, conversation_id: str) -> Release | None:
        """The conversation's lock if it is free now, else None (never waits)."""
        inner = self.threads.acquire(self._key(conversation_id))
        if inner is None:
            return None
        release = self._with_outer(conversation_id, inner)
        if release is None:
            inner()
        return release

    def acquire(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Release:
        """Wait for the conversation's lock; :class:`ConversationBusy` after ``timeout``."""
        deadline = time.monotonic() + timeout
        inner = self.threads.acquire(self._key(conversation_id), timeout)
        if inner is None:
            raise ConversationBusy(conversation_id, timeout)
        pause = _FIRST_PAUSE
        while True:
            release = self._with_outer(conversation_id, inner)
            if release is not None:
                return release
            left = deadline - time.monotonic()
            if left <= 0:
                inner()
                raise ConversationBusy(conversation_id, timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 2, _MAX_PAUSE)

    @contextmanager
    def hold(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        release = self.acquire(conversation_id, timeout)
        try:
            yield
        finally:
            release()


# -- SQLite: byte-range locks on <db>.locks ---------------------------------------------------------

_RANGE = 2**31 - 2  # byte offsets stay in a signed 32-bit range on every platform


def _try_lock(fd: int, offset: int) -> bool:
    try:
        if _HAVE_FCNTL:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        return True
    except OSError:
        return False


def _unlock(fd: int, offset: int) -> None:
    if _HAVE_FCNTL:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
    else:  # pragma: no cover - Windows
        os.lseek(fd, offset, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=8192)  # a turn takes and frees it: two hashes a turn otherwise
def _offset(conversation_id: str) -> int:
    return lock_key(conversation_id) % _RANGE


class _LockFile:
    """One open descriptor per lock file per process, and its turn locks (keyed by byte, since
    two ids that hash to one byte share the kernel lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)  # owner-only
        self.locks = TurnLocks(self._try_byte, key=lambda cid: str(_offset(cid)))

    def _try_byte(self, conversation_id: str) -> Release | None:
        offset = _offset(conversation_id)
        if not _try_lock(self.fd, offset):
            return None
        return lambda: _unlock(self.fd, offset)


_files: dict[str, _LockFile] = {}
#: A database path -> its lock file's real path (a path stays the same file for the process).
_real_paths: dict[Path, str] = {}
_files_guard = threading.Lock()


def _reset_after_fork() -> None:
    """A forked child holds none of its parent's record locks; start with a clean registry."""
    global _files_guard
    _files_guard = threading.Lock()
    _files.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_reset_after_fork)


def file_locks(db_path: Path) -> TurnLocks:
    """The turn locks of a SQLite database: byte-range locks on ``<db>.locks``, shared by every
    store of this process on that file (see the module docstring)."""
    key = _real_paths.get(db_path)
    if key is None:  # realpath's lstat calls once per path, not once per turn
        key = _real_paths[db_path] = os.path.realpath(f"{db_path}.locks")
    with _files_guard:
        lf = _files.get(key)
        if lf is None:
            lf = _files[key] = _LockFile(Path(key))
        return lf.locks
