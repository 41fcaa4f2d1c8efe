"""The shapes of the HTTP API's request and response bodies (pydantic models, so FastAPI
validates requests with clear 422 errors and the OpenAPI description is generated from them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import Header
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

from ..branches import REVISION
from ..chat import Reply
from ..costs import SideCost, stored_cost
from ..context.seen import CONTEXT
from ..context.thinking import MAX_BUDGET, check_budget
from ..guards.base import BLOCKED
from ..memory.records import Fact
from ..messages import MAX_JSON_DEPTH, StoredMessage, json_problem
from ..store import Conversation
from ..text import clean_json
from ..usage import Usage

#: The deepest nesting a request body may hold: its content blocks, tool schemas and metadata
#: hold MAX_JSON_DEPTH levels each, a few levels inside the body. Checked (iteratively) before
#: anything that recurses reads the body, so 1,000 or 100,000 levels answer 400, never 500.
MAX_BODY_DEPTH = 2 * MAX_JSON_DEPTH

#: Hard ceilings checked by validation; the configured limits (ServerSettings) are usually lower.
MAX_TITLE = 200
MAX_SYSTEM = 20_000
MAX_CONTENT = 200_000

_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


class _Clean(BaseModel):
    """A request body: its strings follow the text rules (colloquy.text) before any field is
    validated, so a JSON escape that decodes to a lone surrogate (``"\\ud83d"``) or NUL is
    stored as U+FFFD, on every route, instead of failing a length check or a store; a body
    nested deeper than :data:`MAX_BODY_DEPTH` is refused first."""

    @model_validator(mode="before")
    @classmethod
    def _text_rules(cls, data: Any) -> Any:
        problem = json_problem(data, MAX_BODY_DEPTH)
        if problem:
            raise ValueError(f"the request body {problem}")
        return clean_json(data)


def _budget(value: int | None) -> int | None:
    if value is not None and value != 0:
        check_budget(value)
    return value


ThinkingBudget = Annotated[int | None, Field(
    None, ge=0, le=MAX_BUDGET, description="extended thinking for this turn: a budget in tokens "
    "(at least 1024), or 0 for none (default: the server's)"), AfterValidator(_budget)]


class _Body(_Clean):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    type: str = Field(examples=["not_found"])
    message: str = Field(examples=["no conversation with id 'c_0123456789ab'"])
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error response has this shape (the OpenAI SDK reads ``error.message`` too)."""

    error: ErrorDetail


class ConversationCreate(_Body):
    title: str | None = Field(None, max_length=MAX_TITLE)
    system: str | None = Field(None, max_length=MAX_SYSTEM, description="the persona")
    model: str | None = Field(
        None, max_length=100, description="one of the server's allowed models (default: its own)"
    )


class ConversationPatch(_Body):
    title: str = Field(min_length=1, max_length=MAX_TITLE)


#: The request header that carries an idempotency key on every turn route
#: (draft-ietf-httpapi-idempotency-key-header); the native route also takes it in the body.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: What a key may look like, in the header and in the body alike.
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]+$"
IdempotencyKeyHeader = Annotated[str | None, Header(
    alias=IDEMPOTENCY_HEADER, min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN,
    description="one key per message: a retry with the same key and message is answered once "
    "(the stored reply, header Idempotent-Replayed: true); the same key with another message is "
    "refused (422)")]


class MessageCreate(_Body):
    content: str = Field(min_length=1, max_length=MAX_CONTENT, description="the user's message")
    stream: StrictBool = Field(False, description="answer as server-sent events")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN,
        description="a retried request with the same key is answered once; the same key with "
        "another message is refused (422). The Idempotency-Key header works too.",
    )
    thinking: ThinkingBudget = None


class EditCreate(MessageCreate):
    seq: int | None = Field(
        None, ge=1, description="the seq of the user message this edit replaces: when another "
        "message was sent (or the turn revised) since, the edit is refused (409 edit_conflict) "
        "instead of replacing a message not meant; absent: the newest, whichever it is")


class RegenerateCreate(_Body):
    stream: StrictBool = Field(False, description="answer as server-sent events")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN,
        description="a retried request with the same key is answered once; the same key used "
        "for another request (a send, an edit) is refused (422)",
    )
    thinking: ThinkingBudget = None
    seq: int | None = Field(
        None, ge=1, description="the seq of the reply to regenerate: when its turn is no longer "
        "the newest, refused (409 edit_conflict); absent: the newest turn's")


class ConversationOut(BaseModel):
    #: The conversation's name in the caller's namespace (what every route takes).
    id: str
    title: str | None
    system: str
    model: str
    created_at: float
    updated_at: float
    message_count: int

    @classmethod
    def of(cls, c: Conversation) -> ConversationOut:
        return cls(id=c.name, title=c.title, system=c.persona, model=c.model,
                   created_at=c.created_at, updated_at=c.updated_at, message_count=c.last_seq)


class MessageOut(BaseModel):
    seq: int
    role: Literal["user", "assistant"]
    #: Content blocks in the Anthropic shape (text, tool_use, tool_result, image).
    content: list[dict[str, Any]]
    text: str
    created_at: float
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    #: Why a reply ended ("end_turn", "max_tokens", ...; "cancelled": its client went away and
    #: this is the text received until then).
    stop_reason: str | None = None
    #: Set when an edit or a regeneration replaced this message's turn: the seq of the user
    #: message that did (the message stays in the log; no model is shown it again).
    superseded_by: int | None = None
    #: On the user message of an edit or a regeneration: "edit" or "regenerate".
    revision: str | None = None
    #: True when an input guard blocked the turn this message belongs to.
    blocked: bool = False
    #: True when a record of what the model saw is stored with this reply
    #: (``GET .../messages/{seq}/context``).
    has_context: bool = False

    @classmethod
    def of(cls, sm: StoredMessage, superseded_by: int | None = None) -> MessageOut:
        return cls(
            seq=sm.seq, role=sm.role, text=sm.message.text, created_at=sm.created_at,
            content=[b.model_dump(mode="json", exclude_none=True) for b in sm.message.content],
            model=sm.model, usage=sm.usage, cost_usd=stored_cost(sm),
            stop_reason=sm.meta.get("stop_reason") if sm.role == "assistant" else None,
            superseded_by=superseded_by, revision=sm.meta.get(REVISION),
            blocked=bool(sm.meta.get(BLOCKED)), has_context=CONTEXT in sm.meta,
        )


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]
    #: Model calls besides the turns (summaries, fact extraction, title, topic judge), billed to
    #: this conversation: each reply's cost plus these is what it cost.
    side_calls: list[SideCost] = Field(default_factory=list)


class ConversationList(BaseModel):
    conversations: list[ConversationOut]


class ReplyOut(BaseModel):
    """One turn's answer, with what it cost."""

    conversation_id: str
    seq: int
    text: str
    #: The reply's content blocks in the Anthropic shape (thinking, citations, server tools).
    content: list[dict[str, Any]] = Field(default_factory=list)
    model: str
    usage: Usage
    cost_usd: float | None
    stop_reason: str | None = None
    rounds: int = 1
    notes: list[str] = Field(default_factory=list)
    #: True when this is the stored answer to an earlier request with the same idempotency key.
    replayed: bool = False
    #: True when an input guard blocked the turn (the text is the guard's answer, no model call).
    blocked: bool = False
    #: Guard verdicts of the turn that were not a plain allow.
    guards: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def of(cls, r: Reply, replayed: bool = False, *, name: str) -> ReplyOut:
        """``name``: the conversation's name, as the caller addressed it."""
        return cls(conversation_id=name, seq=r.seq, text=r.text, model=r.model,
                   content=[b.model_dump(mode="json", exclude_none=True) for b in r.message.content],
                   usage=r.usage, cost_usd=r.cost_usd, stop_reason=r.stop_reason,
                   rounds=r.rounds, notes=r.notes, replayed=replayed, blocked=r.blocked,
                   guards=r.guards)


class ContextOut(BaseModel):
    """Exactly what the next turn would send to the model."""

    request: dict[str, Any] = Field(description="the request body, Anthropic Messages shape")
    input_tokens: int = Field(description="estimated input tokens of that request")


class FactCreate(_Body):
    statement: str = Field(min_length=1, max_length=1000, description="the fact, short")
    subject: str | None = Field(None, max_length=100, description="what it is about")


class FactOut(BaseModel):
    id: str
    subject: str
    statement: str
    origin: str
    source_conversation: str | None = Field(
        None, description="the conversation it was learnt in, by the name the caller uses for "
        "it (as in /v1/conversations/{name}); null when added by hand or when that "
        "conversation has been deleted")
    source_seq: int | None = Field(None, description="the message it was learnt from")
    valid_from: float
    created_at: float

    @classmethod
    def of(cls, f: Fact, names: Mapping[str, str] | None = None) -> FactOut:
        """``names``: conversation id -> the caller's name for it (store.conversation_names);
        a source outside it is not shown (an internal id means nothing to the caller)."""
        name = (names or {}).get(f.source_conversation or "")
        return cls(id=f.id, subject=f.subject, statement=f.statement, origin=f.origin,
                   source_conversation=name, source_seq=f.source_seq if name else None,
                   valid_from=f.valid_from, created_at=f.created_at)


class FactList(BaseModel):
    facts: list[FactOut]


class DeleteOut(BaseModel):
    """What ``DELETE /v1/me`` removed; the caller's token no longer works afterwards."""

    user_id: str
    conversations: int
    #: Rows deleted per table.
    rows: dict[str, int]
    #: How the deleted bytes were erased from the database files.
    erasure: list[str]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class Me(BaseModel):
    user_id: str


# -- OpenAI-compatible ----------------------------------------------------------------------------


class OAMessage(_Clean):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class OAStreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class ChatCompletionRequest(_Clean):
    """The OpenAI chat-completions request. Only the trailing user message (or tool results)
    is new to colloquy; the history comes from the stored conversation named by
    ``X-Colloquy-Conversation``, ``user`` or ``metadata.conversation_id`` (or found by the
    replayed history). Unknown sampling fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[OAMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: OAStreamOptions | None = None
    user: str | None = Field(None, max_length=128)
    metadata: dict[str, str] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=200_000)
    tools: list[dict[str, Any]] | None = None
    #: "auto", "required", "none" or {"type": "function", "function": {"name": ...}}.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    n: int | None = Field(None, ge=1, description="1 only (more is refused with a 400)")
    #: colloquy's extension: extended thinking for this turn (a budget in tokens, 0: none).
    thinking: ThinkingBudget = None
