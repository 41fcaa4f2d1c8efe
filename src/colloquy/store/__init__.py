"""Stores, and :func:`open_store` to pick one from a URL or path.

``memory`` is the in-process store; ``postgresql://...`` is PostgreSQL; anything else is a SQLite
file path (``sqlite:///path`` also works). The default is a file in the user's data directory,
overridable by ``COLLOQUY_DB``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from platformdirs import user_data_path

from ..errors import ConfigError
from .base import Conversation, LogRead, NewMessage, Store, new_id
from .memory import MemoryStore
from .owner import Owner
from .sqlite import SQLiteStore


def default_db_path() -> Path:
    return user_data_path("colloquy", appauthor=False) / "colloquy.db"


def resolve_db_url(db: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Argument, then ``COLLOQUY_DB``, then the user's data directory. An argument that is given
    but empty (``--db ""``, a script's unset variable) is a ConfigError, never the default."""
    env = os.environ if environ is None else environ
    if db is not None and not db.strip():
        raise ConfigError("the database path is empty (--db ''): name a file, 'memory' or a "
                          "postgresql:// URL, or leave it out for the default")
    return db or env.get("COLLOQUY_DB") or str(default_db_path())


def open_store(
    db: str | None = None, environ: Mapping[str, str] | None = None, *, create: bool = True
) -> Store:
    """The store ``db`` names (see the module docstring). ``create=False`` (commands that only
    read or delete) refuses a SQLite file that does not exist, with a StoreError, instead of
    creating it and its directories. A file that is not a database, or one that cannot be
    opened (permissions, a read-only directory), is a StoreError too: one clear line."""
    url = resolve_db_url(db, environ)
    if url in {"memory", ":memory:"}:
        return MemoryStore()
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore  # type: ignore[import-not-found]
        except ImportError as e:
            raise ConfigError(
                "PostgreSQL needs the postgres extra: pip install -e '.[postgres]'"
            ) from e
        return PostgresStore(url)  # type: ignore[no-any-return]
    if url.startswith("sqlite:///"):
        url = url[len("sqlite:///"):]
    elif "://" in url:
        raise ConfigError(f"unsupported database URL {url!r}: use a file path or postgresql://")
    return SQLiteStore(url, create=create)


__all__ = [
    "Conversation",
    "LogRead",
    "MemoryStore",
    "NewMessage",
    "Owner",
    "SQLiteStore",
    "Store",
    "default_db_path",
    "new_id",
    "open_store",
    "resolve_db_url",
]
