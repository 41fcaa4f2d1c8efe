"""The HTTP service: a thin FastAPI app over :class:`colloquy.Chat` and the store, plus the web
chat page. Needs the ``server`` extra: ``pip install -e '.[server]'``.

    from colloquy.server import create_app
    app = create_app(db="chat.db", model="echo")   # serve with any ASGI server

Names are imported lazily, so ``colloquy users ...`` works without FastAPI installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ChatService", "RateLimit", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        try:
            from .app import create_app
        except ImportError as e:  # pragma: no cover - depends on the environment
            from ..errors import ConfigError

            raise ConfigError(
                "the HTTP service needs the server extra: pip install -e '.[server]'"
            ) from e
        return create_app
    if name in {"ChatService", "ServerSettings"}:
        from . import service

        return getattr(service, name)
    if name == "RateLimit":
        from .ratelimit import RateLimit

        return RateLimit
    raise AttributeError(name)
