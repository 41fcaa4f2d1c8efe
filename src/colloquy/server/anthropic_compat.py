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
from pydantic import ConfigDict, Field, StrictBool, ValidationError

from ..chat import Reply
from ..context.thinking import MIN_BUDGET
from ..errors import ColloquyError, ToolError
from ..messages import ContentBlock, Message
from ..models import ThinkingDelta, ToolSpec
from ..models.base import TextPiece
from ..reply import CANCELLED, GUARD
from ..store.users import User
from ..turn_options import ANTHROPIC_API
from . import errors as E
from .compat import (CONVERSATION_HEADER, ConversationHeader, client_name, ignored_note,
                     split_turn, tool_choice, turn_responses)
from .inflight import cancel_on_disconnect
from .schemas import ErrorBody, IdempotencyKeyHeader, _Clean
from .service import ChatService, replayed_header

#: The Messages API's stop reasons; colloquy's own (a guard's block) is the nearest of them.


class MessagesRequest(_Clean):
    """The Messages API's request body (``anthropic.types.MessageCreateParams``); fields colloquy
    does not use (``top_p``, ``stop_sequences``...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=200)
    max_tokens: int = Field(ge=1, le=200_000)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stream: StrictBool = False  # JSON true or false: "yes" is a 400, as on the API
    temperature: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
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
        try:
            specs.append(ToolSpec.from_anthropic(tool))
        except ToolError as e:
            field = e.field or "name"
            raise E.InvalidRequest(f"tools.{i}.{field}: {e}", param=f"tools.{i}.{field}") from None
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
    """The reply's stop_reason as the provider said it (``model_context_window_exceeded``,
    ``refusal``, a reason added later...); a guard's answer is a ``refusal``; colloquy's own
    ``cancelled`` (a replayed reply whose first caller went away), or none, is ``end_turn``."""
    if reply.blocked or reply.stop_reason == GUARD:
        return "refusal"
    if reply.stop_reason is None or reply.stop_reason == CANCELLED:
        return "end_turn"
    return reply.stop_reason


def _extension(reply: Reply, name: str, notes: list[str]) -> dict[str, Any]:
    return {"conversation_id": name, "seq": reply.seq, "cost_usd": reply.cost_usd,
            "notes": [*reply.notes, *notes], "usage_estimated": reply.usage.estimated}


def _wire(block: ContentBlock) -> dict[str, Any]:
    return Message(role="assistant", content=[block]).to_anthropic()["content"][0]  # type: ignore[no-any-return]


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"


class _Blocks:
    """The Messages API's content-block events for a streamed turn: exactly the reply's block
    list, each block with its own ``index``, ``content_block_start``, deltas and
    ``content_block_stop``, in order, whatever the mix of blocks.

    Deltas go out live while their place in the reply is certain: the first model call's
    thinking blocks, then its first text block, from block 0 on, without a gap (a
    ``TextPiece``/``ThinkingDelta`` names its call and block). The text block stays open until
    the reply comes, since its citations come whole with it (``citations_delta``, one per
    citation, before its stop). Everything after (a second text block, server tools and their
    results, tool_use, unknown kinds, any text that is not a model delta: a guarded or replayed
    reply) is held back and sent from the reply itself, so the client's final message equals
    the stored one."""

    def __init__(self) -> None:
        self.live: list[str] = []  # the kinds of the reply's first blocks, streamed live
        self.sent: list[str] = []  # their text or thinking as sent
        self.open = False          # the last live block is open
        self.held = False          # a delta's place was not certain: the rest comes whole

    def _start(self, block: dict[str, Any]) -> str:
        return _sse("content_block_start", {"index": len(self.live) - 1, "content_block": block})

    def _stop(self) -> str:
        self.open = False
        return _sse("content_block_stop", {"index": len(self.live) - 1})

    def _delta(self, delta: dict[str, Any]) -> str:
        return _sse("content_block_delta", {"index": len(self.live) - 1, "delta": delta})

    def _place(self, kind: str, index: int | None, call: int | None) -> str | None:
        """"" when the delta of the model call's block ``index`` continues the open block, the
        events that open its block when it is the next one, None when it cannot go out live
        (from then on nothing does)."""
        if self.held or call != 0 or index is None:
            self.held = True
            return None
        if self.open and index == len(self.live) - 1 and self.live[-1] == kind:
            return ""
        if index != len(self.live) or (self.live and self.live[-1] == "text"):
            self.held = True  # a gap, or a block after the text (its citations come last)
            return None
        out = self._stop() if self.open else ""
        self.live.append(kind)
        self.sent.append("")
        self.open = True
        empty = {"type": "text", "text": ""} if kind == "text" else {
            "type": "thinking", "thinking": "", "signature": ""}
        return out + self._start(empty)

    def text(self, piece: str) -> str:
        # A plain str is no model's delta (a guarded or replayed reply): the reply has it.
        out = self._place("text", piece.block, piece.call) if isinstance(
            piece, TextPiece) else self._place("text", None, None)
        if out is None:
            return ""
        self.sent[-1] += piece
        return out + self._delta({"type": "text_delta", "text": piece})

    def thinking(self, event: ThinkingDelta) -> str:
        out = self._place("thinking", event.index, event.call)
        if out is None:
            return ""
        if event.thinking:
            self.sent[-1] += event.thinking
            out += self._delta({"type": "thinking_delta", "thinking": event.thinking})
        if event.signature:
            out += self._delta({"type": "signature_delta", "signature": event.signature})
        return out

    def rest(self, content: list[ContentBlock]) -> str:
        """The reply's blocks not sent live, whole; the open block finished first."""
        out = ""
        for index, block in enumerate(content):
            wire = _wire(block)
            if index < len(self.live):
                if self.open and index == len(self.live) - 1:
                    out += self._finish(wire, self.sent[index]) + self._stop()
                continue
            self.live.append(str(wire.get("type")))
            out += self._whole(wire)
        return out + (self._stop() if self.open else "")

    def _finish(self, wire: dict[str, Any], sent: str) -> str:
        """The open live block's end: what the reply holds beyond what went out live."""
        out = ""
        if wire.get("type") == "text":
            whole = str(wire.get("text", ""))
            if whole.startswith(sent) and len(whole) > len(sent):
                out += self._delta({"type": "text_delta", "text": whole[len(sent):]})
            for citation in wire.get("citations") or ():
                out += self._delta({"type": "citations_delta", "citation": citation})
        return out

    def _whole(self, wire: dict[str, Any]) -> str:
        """One block of the reply as the API streams it: a text or thinking block as its
        empty start and one delta (citations after the text), a tool_use's input as one
        ``input_json_delta``, any other block whole in its start."""
        kind = wire.get("type")
        if kind == "text":
            out = self._start({"type": "text", "text": ""})
            if wire.get("text"):
                out += self._delta({"type": "text_delta", "text": wire["text"]})
            for citation in wire.get("citations") or ():
                out += self._delta({"type": "citations_delta", "citation": citation})
        elif kind == "thinking":
            out = self._start({"type": "thinking", "thinking": "", "signature": ""})
            if wire.get("thinking"):
                out += self._delta({"type": "thinking_delta", "thinking": wire["thinking"]})
            if wire.get("signature"):
                out += self._delta({"type": "signature_delta", "signature": wire["signature"]})
        elif kind in ("tool_use", "server_tool_use") and isinstance(wire.get("input"), dict):
            out = self._start({**wire, "input": {}})
            out += self._delta({"type": "input_json_delta",
                                "partial_json": json.dumps(wire["input"], ensure_ascii=False)})
        else:
            out = self._start(wire)
        self.open = True
        return out + self._stop()

    def stop(self) -> str:
        """The open block's stop (before an error event)."""
        return self._stop() if self.open else ""


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
        return client_name((CONVERSATION_HEADER, header),
                           ("metadata.user_id", (metadata or {}).get("user_id")))

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
        choice = tool_choice(body.tool_choice, tools)
        conv, chat, ticket, replay = await service.client_turn(
            user, named(x_colloquy_conversation, body.metadata), system, history, content,
            body.model, idempotency_key, ANTHROPIC_API)
        # The API's max_tokens holds the thinking budget; colloquy's is the answer's own.
        options: dict[str, Any] = {
            "api": ANTHROPIC_API, "temperature": body.temperature, "thinking": budget,
            "tools": tools, "tool_choice": choice,
            "max_tokens": body.max_tokens - budget if budget else body.max_tokens}
        headers = {CONVERSATION_HEADER: conv.name}
        ignored = ignored_note(body.model_extra)
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
            response.headers.update({**headers, **replayed_header(replayed)})
            return {**message(reply, reply.message.to_anthropic()["content"]),
                    "colloquy": _extension(reply, conv.name, ignored)}

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
                            "usage": _usage(reply),
                            "colloquy": _extension(reply, conv.name, ignored)})
                        yield _sse("message_stop", {})
            except ColloquyError as e:
                status, kind = E.status_for(e)
                yield blocks.stop()
                yield f"event: error\ndata: {json.dumps(E.error_body('anthropic', status, kind, E.client_message(e, redactor)))}\n\n"
            finally:
                ticket.release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache",
                                          **replayed_header(replay)},
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
        tokens = await service.on_threads(  # it builds a context: a policy may wait
            service.count_for_client, user, named(x_colloquy_conversation, body.metadata),
            system, history, content, tools)
        return {"input_tokens": tokens}
