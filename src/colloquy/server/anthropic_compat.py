"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API, with
memory.

An application written for the ``anthropic`` SDK gets colloquy's memory by changing
``base_url`` only (its ``api_key`` is a colloquy token, sent as ``x-api-key``). As on the
OpenAI-compatible route, the request is split into the replayed history and the new user message
(colloquy.server.compat): only the new message is stored and answered, with the conversation's
persona, memory, policy, guards and costs; the conversation is the one named by the
``X-Colloquy-Conversation`` header or ``metadata.user_id``, else the one the replayed history
continues. Content blocks are colloquy's own shape (colloquy.messages), so every block the API
knows (images, documents, thinking, server tools, unknown kinds) is taken and kept as sent;
``tools`` are the client's (the model's ``tool_use`` ends the turn with stop_reason
``tool_use``; the client's ``tool_result`` is the next message) or server tools passed on;
``thinking: {"type": "enabled", "budget_tokens": N}`` asks for extended thinking, whose budget
is inside ``max_tokens`` as in the API.

Answers have the API's shapes: a ``message`` object, or the SSE events ``message_start``,
``content_block_start``/``_delta``/``_stop`` (``text_delta``, ``thinking_delta``,
``signature_delta``, ``input_json_delta``), ``message_delta``, ``message_stop``, and ``error``
events; errors are ``{"type": "error", "error": {"type", "message"}}``.
"""

import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from pydantic import ConfigDict, Field, ValidationError

from ..chat import Reply
from ..context.thinking import MIN_BUDGET
from ..errors import ColloquyError
from ..messages import ContentBlock, Message, TextBlock, ThinkingBlock
from ..models import ThinkingDelta, ToolSpec
from ..store.users import User
from . import errors as E
from .compat import CONVERSATION_HEADER, ConversationHeader, split_turn, turn_responses
from .inflight import cancel_on_disconnect
from .schemas import ErrorBody, IdempotencyKeyHeader, _Clean
from .service import ChatService

#: The Messages API's stop reasons; colloquy's own (a guard's block) is the nearest of them.
_STOP = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}


class MessagesRequest(_Clean):
    """The Messages API's request body (``anthropic.types.MessageCreateParams``); fields colloquy
    does not use (``top_p``, ``stop_sequences``, ``tool_choice``...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=200)
    max_tokens: int = Field(ge=1, le=200_000)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class CountTokensRequest(_Clean):
    """``messages.count_tokens``'s body: the request without ``max_tokens``."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


def _system(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system
    texts: list[str] = []
    for i, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise E.InvalidRequest("system blocks are text blocks", param=f"system.{i}")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _messages(raw: list[dict[str, Any]]) -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(raw):
        try:
            out.append(Message.model_validate(m))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in (i, *first.get("loc", ())))
            raise E.InvalidRequest(f"messages.{where}: {first.get('msg', 'invalid')}",
                                   param=f"messages.{where}") from e
    return out


def _tools(raw: list[dict[str, Any]] | None) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for i, tool in enumerate(raw or ()):
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("name"), str):
            raise E.InvalidRequest("a tool needs a name", param=f"tools.{i}.name")
        specs.append(ToolSpec.from_anthropic(tool))
    return specs


def _budget(thinking: dict[str, Any] | None, max_tokens: int | None) -> int | None:
    """The turn's thinking budget: N for ``{"type": "enabled", "budget_tokens": N}``, 0 for
    ``disabled``, None (the server's own) when absent; the API's own rules checked."""
    if not thinking:
        return None
    if thinking.get("type") == "disabled":
        return 0
    budget = thinking.get("budget_tokens")
    if thinking.get("type") != "enabled" or not isinstance(budget, int):
        raise E.InvalidRequest('thinking is {"type": "enabled", "budget_tokens": N} or '
                               '{"type": "disabled"}', param="thinking")
    if budget < MIN_BUDGET:
        raise E.InvalidRequest(f"thinking.budget_tokens: at least {MIN_BUDGET}",
                               param="thinking.budget_tokens")
    if max_tokens is not None and budget >= max_tokens:
        raise E.InvalidRequest("max_tokens must be greater than thinking.budget_tokens",
                               param="max_tokens")
    return budget


def _usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cache_read_tokens}


def _stop_reason(reply: Reply) -> str:
    if reply.blocked:
        return "refusal"
    return reply.stop_reason if reply.stop_reason in _STOP else "end_turn"


def _extension(reply: Reply, name: str) -> dict[str, Any]:
    return {"conversation_id": name, "seq": reply.seq, "cost_usd": reply.cost_usd,
            "notes": reply.notes, "usage_estimated": reply.usage.estimated}


def _wire(block: ContentBlock) -> dict[str, Any]:
    return Message(role="assistant", content=[block]).to_anthropic()["content"][0]  # type: ignore[no-any-return]


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"


class _Blocks:
    """Turns the turn's stream (text and thinking deltas, then the reply) into the Messages
    API's content-block events: text and thinking stream as they come; the reply's other blocks
    (tool_use, server tools and their results, redacted thinking, unknown kinds) follow whole,
    a tool_use's input as one ``input_json_delta``."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self.streamed: list[str] = []  # the kinds streamed live, in order

    def _start(self, block: dict[str, Any]) -> str:
        out = self.stop()
        self.index += 1
        self.open = str(block["type"])
        return out + _sse("content_block_start", {"index": self.index, "content_block": block})

    def stop(self) -> str:
        if self.open is None:
            return ""
        self.open = None
        return _sse("content_block_stop", {"index": self.index})

    def _delta(self, delta: dict[str, Any]) -> str:
        return _sse("content_block_delta", {"index": self.index, "delta": delta})

    def text(self, piece: str) -> str:
        out = ""
        if self.open != "text":
            out = self._start({"type": "text", "text": ""})
            self.streamed.append("text")
        return out + self._delta({"type": "text_delta", "text": piece})

    def thinking(self, event: ThinkingDelta) -> str:
        out = ""
        if self.open != "thinking":
            out = self._start({"type": "thinking", "thinking": "", "signature": ""})
            self.streamed.append("thinking")
        if event.thinking:
            out += self._delta({"type": "thinking_delta", "thinking": event.thinking})
        if event.signature:
            out += self._delta({"type": "signature_delta", "signature": event.signature})
        return out

    def rest(self, content: list[ContentBlock]) -> str:
        """The reply's blocks not streamed live, whole, then the last stop."""
        out = ""
        pending = list(self.streamed)
        for block in content:
            if isinstance(block, (TextBlock, ThinkingBlock)) and block.type in pending:
                pending.remove(block.type)
                continue
            wire = _wire(block)
            if wire.get("type") == "tool_use":
                out += self._start({**wire, "input": {}})
                out += self._delta({"type": "input_json_delta",
                                    "partial_json": json.dumps(wire.get("input", {}))})
            elif wire.get("type") == "text":
                out += self._start({**wire, "text": ""})
                out += self._delta({"type": "text_delta", "text": wire.get("text", "")})
            else:
                out += self._start(wire)
        return out + self.stop()


def add_anthropic_routes(
    routes: Any, service: ChatService, current_user: Callable[..., Any], redactor: E.Redactor
) -> None:
    """Add the routes to the app through its route helper (``routes.post``)."""

    def parse(body: MessagesRequest | CountTokensRequest
              ) -> tuple[str | None, list[Message], Message, list[ToolSpec]]:
        service.offered_model(body.model)
        messages = _messages(body.messages)
        history, content = split_turn(messages)
        service.check_message(content)  # before a conversation is created for it
        return _system(body.system), history, content, _tools(body.tools)

    def named(header: str | None, metadata: dict[str, Any] | None) -> str | None:
        user_id = (metadata or {}).get("user_id")
        return header or (user_id if isinstance(user_id, str) and user_id else None)

    @routes.post(
        "/messages",
        summary="Anthropic-compatible Messages API over a stored conversation",
        description=(
            "Send the conversation as Anthropic clients do; only the new user message (or tool "
            "results) is stored and answered. Name the conversation with the "
            f"`{CONVERSATION_HEADER}` header or `metadata.user_id` (created on first use), or "
            "name none: the replayed history finds it. With `stream: true`, the Messages API's "
            "server-sent events."
        ),
        responses=turn_responses("a message object, or its events when streaming"),
    )
    async def create_message(
        body: MessagesRequest,
        user: Annotated[User, Depends(current_user)],
        request: Request,
        response: Response,
        x_colloquy_conversation: ConversationHeader = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Any:
        system, history, content, tools = parse(body)
        budget = _budget(body.thinking, body.max_tokens)
        conv, chat, ticket = await service.client_turn(
            user, named(x_colloquy_conversation, body.metadata), system, history, content,
            body.model, idempotency_key)
        # The API's max_tokens holds the thinking budget; colloquy's is the answer's own.
        options: dict[str, Any] = {
            "temperature": body.temperature, "thinking": budget, "tools": tools,
            "max_tokens": body.max_tokens - budget if budget else body.max_tokens}
        headers = {CONVERSATION_HEADER: conv.name}
        message_id = f"msg_{secrets.token_hex(12)}"

        def message(reply: Reply | None, content: list[dict[str, Any]]) -> dict[str, Any]:
            return {"id": message_id, "type": "message", "role": "assistant",
                    "model": reply.model if reply else chat.model.name, "content": content,
                    "stop_reason": _stop_reason(reply) if reply else None,
                    "stop_sequence": None,
                    "usage": _usage(reply) if reply else {"input_tokens": 0, "output_tokens": 0}}

        if not body.stream:
            with ticket:  # a client that goes away stops the model call (its partial reply kept)
                reply, replayed = await cancel_on_disconnect(request.receive, service.send(
                    chat, content, idempotency_key, **options))
            response.headers.update(headers)
            if replayed:
                response.headers["Idempotent-Replayed"] = "true"
            return {**message(reply, reply.message.to_anthropic()["content"]),
                    "colloquy": _extension(reply, conv.name)}

        async def events() -> AsyncIterator[str]:
            # A disconnect cancels this body (Starlette), which stops the turn (colloquy.effects).
            yield _sse("message_start", {"message": message(None, [])})
            blocks = _Blocks()
            try:
                async for event in service.stream(chat, content, idempotency_key, **options):
                    if isinstance(event, str):
                        yield blocks.text(event)
                    elif isinstance(event, ThinkingDelta):
                        yield blocks.thinking(event)
                    else:
                        reply, _ = event
                        yield blocks.rest(list(reply.message.content))
                        yield _sse("message_delta", {
                            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                            "usage": _usage(reply), "colloquy": _extension(reply, conv.name)})
                        yield _sse("message_stop", {})
            except ColloquyError as e:
                status, kind = E.status_for(e)
                yield blocks.stop()
                yield f"event: error\ndata: {json.dumps(E.error_body('anthropic', status, kind, E.client_message(e, redactor)))}\n\n"
            finally:
                ticket.release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"},
                                 background=BackgroundTask(ticket.release))

    @routes.post("/messages/count_tokens",
                 summary="input tokens of the request the turn would send (Anthropic's shape)",
                 responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def count_tokens(
        body: CountTokensRequest,
        user: Annotated[User, Depends(current_user)],
        x_colloquy_conversation: ConversationHeader = None,
    ) -> Any:
        system, history, content, tools = parse(body)
        _budget(body.thinking, None)
        tokens = await service.run(
            service.count_for_client, user, named(x_colloquy_conversation, body.metadata),
            system, history, content, tools)
        return {"input_tokens": tokens}
