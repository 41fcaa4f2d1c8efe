"""Files colloquy creates are readable by their owner only.

Why: a database, its ``-wal``/``-shm`` files, the turn-lock sidecar ``<db>.locks``, exports
and histories hold conversations, facts about people and token hashes. Created with the usual
umask (022) they are world-readable (0644) on a shared machine. So every file colloquy creates
is created 0600 and every directory 0700 (the umask can only narrow that). A file that already
exists keeps its mode: an administrator who widened it on purpose (a group that backs it up,
say) is not overruled.

How it holds for SQLite: SQLite creates a database's ``-wal``, ``-shm`` and journal files with
the mode of the database file itself (``os_unix.c``, ``findCreateFileMode`` and
``unixOpenSharedMemory``), so creating the (empty) database file 0600 before SQLite opens it is
enough for all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with mode 0700 for the directories it creates (existing ones untouched)."""
    p = Path(path)
    missing: list[Path] = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:  # created meanwhile by another process
            pass
    return p


def ensure_private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True when it was created here.
    Safe against a concurrent creator (``O_EXCL``): the loser leaves the winner's file alone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@overload
def private_open(path: str | os.PathLike[str], mode: Literal["w", "a"] = "w", *,
                 encoding: str | None = "utf-8") -> TextIO: ...
@overload
def private_open(path: str | os.PathLike[str], mode: Literal["wb", "ab"], *,
                 encoding: str | None = None) -> BinaryIO: ...
def private_open(path: str | os.PathLike[str], mode: str = "w", *,
                 encoding: str | None = "utf-8") -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a``, ``wb``, ``ab``), creating a missing file
    0600; an existing file keeps its mode (and ``w`` truncates it, as ``open`` does)."""
    if not mode or mode[0] not in "wa" or "+" in mode:
        raise ValueError(f"private_open writes: mode 'w', 'a', 'wb' or 'ab', not {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode[0] == "w" else os.O_APPEND)
    fd = os.open(path, flags, FILE_MODE)
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding)


def write_private_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, created 0600 when missing."""
    with private_open(path, "w") as f:
        f.write(text)
