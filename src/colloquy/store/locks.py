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
* PostgreSQL: a session-level advisory lock held on one pooled connection for the turn; the
  server drops it when the connection closes (see ``postgres.py``).
* Memory: a threading lock per conversation.

POSIX record locks belong to the *process*, not to a file descriptor or thread, so within one
process a per-key threading lock comes first, and all stores in a process on one database file
share one descriptor (closing any descriptor of a file would drop all of the process's locks).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConversationBusy

#: How long a turn waits for another turn on the same conversation before giving up. A turn
#: includes a model call, so this is generous.
DEFAULT_LOCK_TIMEOUT = 300.0

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


class ThreadLocks:
    """One lock per key within a process; entries are dropped when no one holds or waits."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(
        self, key: str, timeout: float = DEFAULT_LOCK_TIMEOUT, name: str | None = None
    ) -> Iterator[None]:
        """Hold the lock of ``key``; ``name`` is the conversation named in a timeout error."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            if not lock.acquire(timeout=timeout):
                raise ConversationBusy(name or key, timeout)
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class _LockFile:
    """One open descriptor per lock file per process, plus the in-process key locks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.threads = ThreadLocks()


_files: dict[str, _LockFile] = {}
_files_guard = threading.Lock()


def _reset_after_fork() -> None:
    """A forked child holds none of its parent's record locks; start with a clean registry."""
    global _files_guard
    _files_guard = threading.Lock()
    _files.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_reset_after_fork)


def _lock_file(path: Path) -> _LockFile:
    key = os.path.realpath(path)
    with _files_guard:
        lf = _files.get(key)
        if lf is None:
            lf = _files[key] = _LockFile(Path(key))
        return lf


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


class FileLocks:
    """Cross-process per-conversation locks for a SQLite database (see the module docstring)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(f"{db_path}.locks")

    @contextmanager
    def hold(self, conversation_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        lf = _lock_file(self.path)
        offset = lock_key(conversation_id) % _RANGE
        deadline = time.monotonic() + timeout
        with lf.threads.hold(str(offset), timeout, name=conversation_id):
            pause = 0.0005
            while not _try_lock(lf.fd, offset):
                if time.monotonic() >= deadline:
                    raise ConversationBusy(conversation_id, timeout)
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            try:
                yield
            finally:
                _unlock(lf.fd, offset)
