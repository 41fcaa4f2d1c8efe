"""Users of the HTTP service: a name and the hash of a bearer token.

Why only a hash: the token is a high-entropy random string (256 bits), so one round of SHA-256
is enough to make a stolen database useless for signing in (no dictionary can reverse it), and
a lookup by hash stays one indexed query per request. The token itself is shown once, when it
is issued, and never stored or logged.

The user's *name* is the ``user_id`` that conversations (and facts) are filed under, so a user
created here owns what the CLI's ``--user NAME`` wrote, and vice versa.

The protocol is here with the in-memory implementation; the SQL stores implement it once for
both databases in ``sqlbase.py`` (statements in ``queries.py``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, StoreError
from .owner import new_generation

TOKEN_PREFIX = "cq_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class User(BaseModel):
    """A user of the service. ``id`` is both the sign-in name and the conversations' user_id."""

    model_config = ConfigDict(frozen=True)
    id: str
    created_at: float
    #: Set when the user is added: a user deleted and added again under the same name has
    #: another generation, so work in flight for the old one cannot write into the new one.
    generation: str = Field(default_factory=new_generation)


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token (SHA-256, hex)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_user_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid user name {name!r}: 1-64 characters, letters, digits, '_', '.', '@', '-'"
        )
    return name


@runtime_checkable
class UserStore(Protocol):
    """What the service needs from a store to authenticate users."""

    def add_user(self, user_id: str, token_hash: str, *, replace: bool = False) -> User:
        """Record a user with a token hash; with ``replace``, rotate the token of an existing
        user (the old token stops working). Raises :class:`StoreError` if the user exists."""
        ...

    def user_for_token_hash(self, token_hash: str) -> User | None: ...

    def list_users(self) -> list[User]: ...

    def remove_user(self, user_id: str) -> bool:
        """Forget the user's token (their conversations are untouched); False if unknown."""
        ...


def issue_token(store: UserStore, user_id: str, *, replace: bool = False) -> str:
    """Create (or with ``replace``, rotate) a user and return their new token, the only time it
    is ever visible."""
    token = new_token()
    store.add_user(check_user_name(user_id), hash_token(token), replace=replace)
    return token


def authenticate(store: UserStore, token: str) -> User | None:
    """The user a bearer token belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return store.user_for_token_hash(hash_token(token))


class MemoryUserMethods:
    """The same methods over a dict, for :class:`MemoryStore`."""

    _users_lock = threading.Lock()

    def _user_table(self) -> dict[str, tuple[str, User]]:
        """user id -> (token hash, user)."""
        table: dict[str, tuple[str, User]] | None = getattr(self, "_users", None)
        if table is None:
            table = {}
            self._users = table
        return table

    def add_user(self, user_id: str, token_hash: str, *, replace: bool = False) -> User:
        with self._users_lock:
            table = self._user_table()
            if user_id in table and not replace:
                raise StoreError(f"user {user_id!r} already exists (rotate with --rotate)")
            user = table[user_id][1] if user_id in table else User(id=user_id, created_at=time.time())
            table[user_id] = (token_hash, user)
            return user

    def user_for_token_hash(self, token_hash: str) -> User | None:
        with self._users_lock:
            for h, user in self._user_table().values():
                if secrets.compare_digest(h, token_hash):
                    return user
        return None

    def list_users(self) -> list[User]:
        with self._users_lock:
            return [user for _, (_, user) in sorted(self._user_table().items())]

    def _user_generation(self, user_id: str) -> str | None:
        with self._users_lock:
            entry = self._user_table().get(user_id)
            return entry[1].generation if entry else None

    def remove_user(self, user_id: str) -> bool:
        with self._users_lock:
            return self._user_table().pop(user_id, None) is not None
