"""How the service reports errors: one table from colloquy's exception tree to HTTP statuses,
and the redaction that keeps secrets out of every response and log line.

Every error body of colloquy's own routes has one shape::

    {"error": {"type": "not_found", "message": "no conversation with id 'c_1'"}}

The compatible routes answer in their API's own shape instead (:func:`error_body`), so that the
``openai`` and ``anthropic`` SDKs raise their usual exceptions with the right fields.

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
    EditConflict,
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
    """A request the service understands but refuses (a bad combination of fields); ``param``
    names the field at fault when there is one (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(NotFound):
    """A request names a model this server does not offer (OpenAI's ``model_not_found``):
    answering with another model instead would be a silent substitution."""

    def __init__(self, name: str, offered: Iterable[str]) -> None:
        super().__init__(f"the model {name!r} does not exist on this server; "
                         f"it offers {sorted(offered)}")
        self.param = "model"


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
    ModelNotFound: (404, "model_not_found"),
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
    EditConflict: (409, "edit_conflict"),
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


def client_message(error: BaseException, redactor: Redactor) -> str:
    """The message of an error response (JSON or in a stream): what a client may read, no
    internal id (colloquy.errors: ColloquyError.client_message) and no secret (Redactor)."""
    return redactor(error.client_message() if isinstance(error, ColloquyError) else str(error))


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


# -- the compatible routes' own error shapes -----------------------------------------------------

#: An error's ``type`` on the OpenAI-compatible routes, by HTTP status (OpenAI's error object:
#: ``{"error": {"message", "type", "param", "code"}}``; colloquy's own kind goes in ``code``).
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                429: "rate_limit_error"}
#: An error's ``type`` on the Anthropic-compatible routes, by HTTP status (the Messages API's
#: ``{"type": "error", "error": {"type", "message"}}``; docs.anthropic.com, "Errors").
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error"}


def error_flavour(path: str, headers: Mapping[str, str]) -> str:
    """Which shape an error on ``path`` takes: ``"openai"`` on /v1/chat/completions and
    /v1/models, ``"anthropic"`` on /v1/messages (and /v1/models asked with the
    ``anthropic-version`` header the Anthropic SDK sends), else colloquy's own (``"native"``)."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/models"):
        return "anthropic" if "anthropic-version" in headers else "openai"
    if path == "/v1/chat/completions":
        return "openai"
    return "native"


def error_body(flavour: str, status: int, kind: str, message: str,
               param: str | None = None, details: list[dict[str, object]] | None = None
               ) -> dict[str, object]:
    """The error body in the flavour's shape (see :func:`error_flavour`)."""
    if flavour == "openai":
        kind_of = OPENAI_TYPES.get(status) or ("server_error" if status >= 500
                                               else "invalid_request_error")
        code = "invalid_api_key" if status == 401 else kind
        return {"error": {"message": message, "type": kind_of, "param": param, "code": code}}
    if flavour == "anthropic":
        kind_of = ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500
                                                  else "invalid_request_error")
        return {"type": "error", "error": {"type": kind_of, "message": message}}
    body: dict[str, object] = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


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
