"""How the service reports errors: one table from colloquy's exception tree to HTTP statuses,
and the redaction that keeps secrets out of every response and log line.

Every error body has one shape, which is also what OpenAI clients parse::

    {"error": {"type": "not_found", "message": "no conversation with id 'c_1'"}}

Why one table: the library raises meaningful errors (a missing conversation, a provider rate
limit, a conflict); translating them in one place keeps statuses consistent across routes and
lets a test walk the table.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping

from ..models.openai import is_placeholder_key
from ..store.memory_records import FactNotFound
from ..errors import (
    AuthenticationError,
    BadRequestError,
    ColloquyError,
    ConfigError,
    ConflictError,
    ContextTooLongError,
    ConversationBusy,
    EmptyCompletionError,
    ConversationNotFound,
    IdempotencyKeyReused,
    InvalidConversationError,
    InvalidTextError,
    MissingAPIKeyError,
    NoContextRecord,
    ModelConnectionError,
    ModelError,
    OverloadedError,
    RateLimitError,
    StoreError,
    StoreUnavailable,
    ToolError,
)


class ServiceError(ColloquyError):
    """An error raised by the service itself (not the library)."""


class NotAuthenticated(ServiceError):
    """No bearer token, or one that matches no user."""


class NotFound(ServiceError):
    """A resource that does not exist or belongs to someone else (the two look the same)."""


class TooManyRequests(ServiceError):
    """The caller's rate limit is spent; ``retry_after`` seconds until a request is allowed."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PayloadTooLarge(ServiceError):
    """The request body is over the configured limit."""


class InvalidRequest(ServiceError):
    """A request the service understands but refuses (a bad combination of fields)."""


class Busy(ServiceError):
    """The same request (idempotency key) is still being answered, or failed: retry later."""


class Overloaded(ServiceError):
    """The worker already has its limit of turns in flight (``serve --max-inflight``): answered
    at once with 503 and ``Retry-After`` rather than queued without bound."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ClientDisconnected(ServiceError):
    """The client went away before its turn ended: the model call was stopped and the partial
    reply stored. Its response (499, nginx's "client closed request") reaches no one."""


#: The one table: exception class -> (HTTP status, error type). The most specific class wins
#: (the lookup walks each error's MRO). ModelError subclasses are the provider's trouble, not
#: the caller's: 502/503/504, with Retry-After where the provider gave one.
STATUS: dict[type[BaseException], tuple[int, str]] = {
    NotAuthenticated: (401, "unauthenticated"),
    NotFound: (404, "not_found"),
    ConversationNotFound: (404, "not_found"),
    FactNotFound: (404, "not_found"),
    NoContextRecord: (404, "not_found"),
    TooManyRequests: (429, "rate_limited"),
    PayloadTooLarge: (413, "payload_too_large"),
    InvalidRequest: (400, "invalid_request"),
    InvalidTextError: (422, "invalid_request"),  # as the schemas' own validation errors
    Busy: (409, "conflict"),
    Overloaded: (503, "overloaded"),
    ClientDisconnected: (499, "client_closed_request"),
    ConflictError: (409, "conflict"),
    ConversationBusy: (409, "conversation_busy"),
    InvalidConversationError: (409, "invalid_conversation"),
    IdempotencyKeyReused: (422, "idempotency_key_reused"),
    MissingAPIKeyError: (503, "model_not_configured"),
    ConfigError: (400, "invalid_request"),
    ContextTooLongError: (422, "context_too_long"),
    RateLimitError: (503, "model_rate_limited"),
    OverloadedError: (503, "model_overloaded"),
    ModelConnectionError: (504, "model_unreachable"),
    EmptyCompletionError: (502, "model_empty_reply"),
    AuthenticationError: (502, "model_auth_failed"),
    BadRequestError: (502, "model_refused_request"),
    ModelError: (502, "model_error"),
    ToolError: (500, "tool_error"),
    StoreUnavailable: (503, "store_unavailable"),  # the database is down or locked: retry
    StoreError: (500, "store_error"),
    ServiceError: (500, "server_error"),
    ColloquyError: (500, "server_error"),
}


def status_for(error: BaseException) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "server_error"


def retry_after(error: BaseException) -> int | None:
    """Seconds for a Retry-After header, when the error says when to come back."""
    value = getattr(error, "retry_after", None)
    if value is None and (isinstance(error, ConversationBusy)
                          or (isinstance(error, ModelError) and error.retryable)):
        value = 1.0
    return None if value is None else max(1, math.ceil(value))


# -- secrets -------------------------------------------------------------------------------------

_SECRET_VARS = re.compile(r"(API_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)
_MIN_SECRET = 8


class Redactor:
    """Replaces known secret values (API keys from the environment, keys given to models) with
    ``[redacted]``. Applied to every error message the service returns and, as a logging
    filter, to every log record, so a provider error that echoes a key cannot leak it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *values: str | None) -> None:
        """Add secrets; short values and placeholder keys (``llamacpp``, ``sk-no-key-required``:
        see colloquy.models.openai.PLACEHOLDER_KEYS) are no secret and are never redacted."""
        for v in values:
            if v and len(v) >= _MIN_SECRET and not is_placeholder_key(v):
                self._secrets.add(v)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return cls(v for k, v in env.items() if _SECRET_VARS.search(k))

    def __call__(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, "[redacted]")
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from a record's message, its arguments and its
    exception, and otherwise leaves the record as it is.

    Why the arguments keep their shape: formatters read them, not only the formatted message
    (uvicorn's access formatter unpacks ``record.args`` into client, method, path and status),
    so a record whose args were dropped breaks the handler ("--- Logging error ---") and loses
    the line. A filter must never break logging: any failure in it lets the record through."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # noqa: BLE001 - a broken record is logged as it is
            pass
        return True

    def _value(self, value: object) -> object:
        return self.redactor(value) if isinstance(value, str) else value

    def _redact(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str):
            record.msg = self.redactor(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: self._value(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(self._value(a) for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - the record's own format is broken: leave it
            return
        if self.redactor(message) != message:
            # A secret inside a non-string argument (an exception, a URL object): format here.
            record.msg, record.args = self.redactor(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.redactor(str(exc)) != str(exc):
                # The traceback would print the secret: keep the message, drop the traceback.
                record.msg = f"{record.getMessage()} [{type(exc).__name__}: {self.redactor(str(exc))}]"
                record.args, record.exc_info, record.exc_text = (), None, None


def install_log_redaction(redactor: Redactor, loggers: Iterable[str] = ("", "uvicorn",
                          "uvicorn.error", "uvicorn.access", "colloquy", "colloquy.server", "httpx")) -> None:
    """Attach the filter to the service's loggers and their handlers (idempotent)."""
    for name in loggers:
        logger = logging.getLogger(name)
        targets: list[logging.Filterer] = [logger, *logger.handlers]
        for t in targets:
            if not any(isinstance(f, RedactingFilter) and f.redactor is redactor for f in t.filters):
                t.addFilter(RedactingFilter(redactor))
