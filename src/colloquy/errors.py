"""colloquy's one exception tree.

Every error colloquy raises on purpose derives from :class:`ColloquyError`, so
callers (the CLI, the HTTP server, users' code) can translate them in one place.

    ColloquyError
    ├── ConfigError                 bad settings: unknown model, missing API key, bad flag value
    │   ├── MissingAPIKeyError
    │   └── ImportRefused           an export file holds rows import will not write
    ├── ModelError                  a model call failed (carries provider, status, request id)
    │   ├── AuthenticationError     401/403: the key is wrong or lacks permission
    │   ├── RateLimitError          429: slow down (retry_after when the API said)
    │   ├── OverloadedError         529/503: the provider is overloaded, try later
    │   ├── ContextTooLongError     the request is over the model's context window
    │   ├── BadRequestError         400/422: the API refused the request's shape
    │   ├── ModelConnectionError    network failure or timeout, nothing came back
    │   └── EmptyCompletionError    a 200 with no content at all (e.g. llama.cpp's context
    │                               overflow while streaming, an empty Anthropic stream)
    ├── InvalidConversationError    a request would break the API's conversation rules
    │   └── NothingToRevise         edit/regenerate asked of a conversation with no turn yet
    ├── EditConflict                an edit/regenerate named a message no longer the newest turn's
    ├── IdempotencyKeyReused        an idempotency key came back with a different message
    ├── InvalidTextError            empty or whitespace-only content (also a ValueError)
    ├── NoContextRecord             no stored record of what a message's model call was sent
    ├── ToolError                   a tool is misconfigured (a tool that *raises* becomes an
    │                               is_error tool_result instead, the model sees it)
    └── StoreError                  persistence failures
        ├── ConversationNotFound
        │   └── OwnerGone           a write on behalf of a deleted conversation or user
        ├── ConflictError           another writer appended to the conversation first
        │   └── TurnSuperseded      a retried key's message was never answered, and a later
        │                           turn was (its answer cannot be put back in place)
        ├── ConversationBusy        another turn held the conversation for too long
        │   └── TurnLockLost        the turn's lock was lost (its database session ended) and
        │                           another turn took the conversation: retry
        └── StoreUnavailable        the database cannot be reached (or stays locked): retry

An error has two texts: ``str(error)`` for logs and local users, naming colloquy's internal ids
(a conversation's id), and :meth:`ColloquyError.client_message` for a remote client (the HTTP
service's error bodies, a reply's notes), which names none: a client calls its conversation by
its own name (which may map to another id, e.g. on the OpenAI-compatible route), and an internal
id must never tell one user about another's rows.
"""

from __future__ import annotations


class ColloquyError(Exception):
    """Root of every error colloquy raises on purpose."""

    def client_message(self) -> str:
        """The error as a remote client may read it: no internal ids (see the module
        docstring). Errors whose message names one override this."""
        return str(self)


def brief(error: BaseException) -> str:
    """``Type: message`` for a note a client reads (a reply's notes): the client's text of a
    colloquy error (:meth:`ColloquyError.client_message`), ``str`` of any other."""
    text = error.client_message() if isinstance(error, ColloquyError) else str(error)
    return f"{type(error).__name__}: {text}"


class ConfigError(ColloquyError):
    """Settings that cannot work: unknown model, missing key, invalid value."""


class MissingAPIKeyError(ConfigError):
    """A provider needs an API key that is not set."""

    def __init__(self, env_var: str, model: str) -> None:
        self.env_var = env_var
        self.model = model
        super().__init__(
            f"model {model!r} needs an API key: set {env_var}, "
            f"or use --model echo to chat offline"
        )


class ImportRefused(ConfigError):
    """An export file holds something import will not write (another user's rows, an invalid
    row); nothing was written. The message names the table, the row and the field (see
    colloquy.rights_import)."""


class ModelError(ColloquyError):
    """A model call failed. The user's message is already stored; retrying is safe."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        base = super().__str__()
        bits = [b for b in (
            self.provider,
            f"HTTP {self.status}" if self.status else None,
            f"request {self.request_id}" if self.request_id else None,
        ) if b]
        return f"{base} ({', '.join(bits)})" if bits else base


class AuthenticationError(ModelError):
    """The API key was refused (401) or lacks permission (403)."""


class RateLimitError(ModelError):
    """The provider rate-limited the request (429)."""

    retryable = True


class OverloadedError(ModelError):
    """The provider is overloaded (Anthropic 529, or 503)."""

    retryable = True


class ContextTooLongError(ModelError):
    """The request is larger than the model's context window: use a tighter policy."""


class BadRequestError(ModelError):
    """The API refused the request as malformed (400/422)."""


class ModelConnectionError(ModelError):
    """No answer came back: network error or timeout."""

    retryable = True


class EmptyCompletionError(ModelError):
    """The provider answered success with nothing in it: no text, no tool call, no reason to
    stop early. llama.cpp's server does so when a streamed prompt overflows its context; an
    Anthropic stream that is empty, or holds ``message_start`` then ``message_stop``, too. Not
    stored as a reply (an empty reply would be merged into every later turn); the user's
    message is kept, and the server maps it to 502."""


class InvalidConversationError(ColloquyError):
    """A conversation cannot be turned into a request the API accepts, even after repair."""


class IdempotencyKeyReused(ColloquyError):
    """An idempotency key came back with a different message than the one first sent with it,
    or for another operation (a send, an edit, a regeneration; colloquy's own route or a
    compatible API's: colloquy.continuity.fingerprint).

    A retry must resend the same content; a new message needs a new key. Replaying the first
    reply would answer a question that was not asked, so the turn is refused and nothing is
    stored. The HTTP service answers 422, as the IETF draft on the Idempotency-Key header says
    for a key reused with another payload (draft-ietf-httpapi-idempotency-key-header, 2.7).
    """

    def __init__(self, conversation_id: str, key: str) -> None:
        self.conversation_id = conversation_id
        self.key = key
        super().__init__(self._text(f"conversation {conversation_id!r}"))

    def _text(self, where: str) -> str:
        return (f"idempotency key {self.key!r} was already used in {where} with a different "
                "message or operation: a retry must resend the same request to the same route, "
                "a new message needs a new key")

    def client_message(self) -> str:
        return self._text("this conversation")


class InvalidTextError(ColloquyError, ValueError):
    """Text that cannot be accepted as content: a message, a fact's statement or a title that
    is empty or only whitespace (see :mod:`colloquy.text`, the text rules). Raised before
    anything is stored or sent; the HTTP service answers 422, the CLI one line (exit 2)."""


class NothingToRevise(InvalidConversationError):
    """Editing or regenerating the last turn of a conversation that has none yet."""


class EditConflict(ColloquyError):
    """An edit or a regeneration named the message it meant (``seq``), and that message is no
    longer the newest current turn's: another message was sent (or the turn revised) since,
    from another tab or device. Revising the newest turn anyway would replace a message the
    user did not mean, so nothing is stored; the HTTP service answers 409 ``edit_conflict``.
    ``newest``: the seq of the newest current turn's user message (None: no turn)."""

    def __init__(self, conversation_id: str, seq: int, newest: int | None) -> None:
        self.conversation_id = conversation_id
        self.seq = seq
        self.newest = newest
        super().__init__(self._text(f"conversation {conversation_id!r}"))

    def _text(self, where: str) -> str:
        now = f"the newest turn starts at message {self.newest}" if self.newest is not None \
            else "there is no turn"
        return (f"message {self.seq} is no longer the newest turn of {where} ({now}): "
                "reload the conversation and edit or regenerate again")

    def client_message(self) -> str:
        return self._text("this conversation")


class NoContextRecord(ColloquyError):
    """A message has no stored record of the context its model call was sent: it is not a
    reply, or it was stored before colloquy kept such records (colloquy.context.seen)."""

    def __init__(self, conversation_id: str, seq: int) -> None:
        self.conversation_id = conversation_id
        self.seq = seq
        super().__init__(self._text(f"message {seq} of {conversation_id}"))

    @staticmethod
    def _text(which: str) -> str:
        return (f"{which} has no record of its context (it is not a reply, or it was stored "
                "before colloquy recorded what each reply was sent)")

    def client_message(self) -> str:
        return self._text(f"message {self.seq}")


class ToolError(ColloquyError):
    """A tool definition is invalid, or the model asked for a tool that does not exist
    too many times in a row. ``field``: for an invalid definition, the field at fault
    (``"name"``, ``"description"``, ``"input_schema"``, ``"definition"``), else None."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreError(ColloquyError):
    """Persistence failed."""


class ConversationNotFound(StoreError):
    """No conversation has that id. ``client_name``: the name the caller asked for (its own
    words, shown back to a remote client); None when the id is colloquy's own."""

    def __init__(self, conversation_id: str, *, client_name: str | None = None) -> None:
        self.conversation_id = conversation_id
        self.client_name = client_name
        super().__init__(f"no conversation with id {conversation_id!r}")

    def client_message(self) -> str:
        if self.client_name is not None:
            return f"no conversation with id {self.client_name!r}"
        return "the conversation does not exist (it was deleted)"


class OwnerGone(ConversationNotFound):
    """A write made on behalf of a conversation or a user that no longer exists: deleted, or
    deleted and created anew under the same name (another *generation*). Nothing was written:
    deletion wins over work that was in flight (a summary, a fact, a title, a reply)."""

    def __init__(self, what: str, conversation_id: str = "") -> None:
        self.conversation_id = conversation_id
        self.client_name = None
        StoreError.__init__(self, f"{what} no longer exists; the write was discarded")

    def client_message(self) -> str:
        what = "conversation" if self.conversation_id else "user"
        return f"the {what} no longer exists; the write was discarded"


class StoreUnavailable(StoreError):
    """The database could not be reached (PostgreSQL down or restarting, the network gone) or
    stayed locked past the busy timeout (SQLite). Nothing of the failed unit of work was
    stored; retrying after ``retry_after`` seconds is safe (with an idempotency key, a turn is
    stored once however often it is retried)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ConflictError(StoreError):
    """Another writer appended to the conversation between our read and our write."""

    def __init__(self, conversation_id: str, expected_seq: int) -> None:
        self.conversation_id = conversation_id
        self.expected_seq = expected_seq
        super().__init__(self._text(f"conversation {conversation_id!r}"))

    def _text(self, which: str) -> str:
        return f"{which} changed concurrently (expected next sequence {self.expected_seq})"

    def client_message(self) -> str:
        return self._text("the conversation")


class ConversationBusy(StoreError):
    """Another turn on the same conversation (another device or process) held its lock for
    longer than the wait allowed. Nothing was stored; sending again later is safe."""

    def __init__(self, conversation_id: str, timeout: float) -> None:
        self.conversation_id = conversation_id
        self.timeout = timeout
        super().__init__(self._text(f"conversation {conversation_id!r}"))

    def _text(self, which: str) -> str:
        return f"{which} is busy with another turn (waited {self.timeout:g}s); try again"

    def client_message(self) -> str:
        return self._text("the conversation")


class TurnLockLost(ConversationBusy):
    """The turn lost the conversation's turn lock while it ran (PostgreSQL: the connection
    holding the lock dropped, e.g. the server restarted) and another turn took the conversation
    meanwhile (the fence in the conversation's record changed: store/locks.py). Nothing of this
    turn was stored after the loss: its user message, if already stored, is kept; its reply is
    not (it would land after the other turn's). Sending again with the same idempotency key is
    safe: it finishes the turn, or says :class:`TurnSuperseded`. HTTP: 409, Retry-After."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.timeout = 0.0
        StoreError.__init__(self, self._text(f"conversation {conversation_id!r}"))

    def _text(self, which: str) -> str:
        return (f"the turn lost the lock of {which} (its database connection dropped) and "
                "another turn took it; this turn's reply was not stored: send again (with the "
                "same idempotency key, the message is not stored twice)")


class TurnSuperseded(ConflictError):
    """A retry (same idempotency key) of a request whose message was stored (``seq``) but never
    answered, and a later turn was answered since (its reply already saw this message: the
    context merges the two). The retry stores nothing and replays nothing, since the only reply
    after the message is another request's; a new message (with a new key) asks again.
    HTTP: 409 ``conflict``."""

    def __init__(self, conversation_id: str, seq: int) -> None:
        self.seq = seq
        super().__init__(conversation_id, seq + 1)

    def _text(self, which: str) -> str:
        return (f"the message sent with this idempotency key (message {self.seq} of {which}) "
                "was never answered and a later turn was answered since: nothing was stored or "
                "replayed; send the message again with a new key to ask again")
