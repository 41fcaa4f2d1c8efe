"""``POST /v1/chat/completions``: the OpenAI chat-completions protocol, with memory.

An existing OpenAI client sends only its *new* message and names a conversation (header
``X-Colloquy-Conversation``, or ``metadata.conversation_id``, or the ``user`` field); colloquy
adds the persona, the memory and the trimmed history from the store, calls the configured model
and stores the turn, exactly as ``POST /v1/conversations/{id}/messages`` does. Earlier messages
the client may send anyway are ignored: the stored log is the history. A system message is used
as the persona of a conversation created by its first request.
"""


import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..chat import Chat, Reply
from ..errors import ColloquyError
from ..store import Conversation
from ..store.users import User
from . import errors as E
from .schemas import ChatCompletionRequest, ErrorBody, IdempotencyKeyHeader, OAMessage
from .inflight import cancel_on_disconnect
from .service import ChatService

CONVERSATION_HEADER = "X-Colloquy-Conversation"

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls", "refusal": "content_filter", "guard": "content_filter"}


def _text(message: OAMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts: list[str] = []
    for part in message.content:
        if part.get("type") != "text":
            raise E.InvalidRequest(
                f"content part type {part.get('type')!r} is not supported here: send text")
        parts.append(str(part.get("text", "")))
    return "\n\n".join(parts)


def _usage(reply: Reply) -> dict[str, Any]:
    """OpenAI's usage object; ``estimated: true`` beside it when the provider reported no
    usage and the counts are colloquy's estimate (clients ignore a field they do not know)."""
    u = reply.usage
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.output_tokens,
        "total_tokens": u.prompt_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
    }
    if u.estimated:
        out["estimated"] = True
    return out


def _extension(reply: Reply, name: str) -> dict[str, Any]:
    """colloquy's own fields, beside OpenAI's (clients ignore what they do not know); the
    conversation is named as the client named it."""
    return {"conversation_id": name, "seq": reply.seq,
            "cost_usd": reply.cost_usd, "usage": reply.usage.model_dump()}


def add_openai_routes(
    routes: Any, service: ChatService, current_user: Callable[..., Any], redactor: E.Redactor
) -> None:
    """Add the route to the app through its route helper (``routes.post``)."""

    @routes.post(
        "/chat/completions",
        summary="OpenAI-compatible chat completion over a stored conversation",
        description=(
            "Send only the new user message, and name the conversation with the "
            f"`{CONVERSATION_HEADER}` header, `metadata.conversation_id` or `user` (created on "
            "first use). With `stream: true`, OpenAI `chat.completion.chunk` events end with "
            "`data: [DONE]`. An `Idempotency-Key` header makes a retried request answered once."
        ),
        responses={
            200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                  "description": "a chat.completion object, or chunks when streaming"},
            400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody},
            422: {"model": ErrorBody},
            502: {"model": ErrorBody}, 503: {"model": ErrorBody},
        },
    )
    async def chat_completions(
        body: ChatCompletionRequest,
        user: Annotated[User, Depends(current_user)],
        request: Request,
        response: Response,
        x_colloquy_conversation: Annotated[str | None, Header(
            alias=CONVERSATION_HEADER, max_length=128)] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Any:
        if body.tools:
            raise E.InvalidRequest("tools are not supported on this endpoint")
        conversation_id = (x_colloquy_conversation
                           or (body.metadata or {}).get("conversation_id") or body.user)
        if not conversation_id:
            raise E.InvalidRequest(
                f"name the conversation: header {CONVERSATION_HEADER}, "
                "metadata.conversation_id, or the user field")
        last = body.messages[-1]
        if last.role != "user":
            raise E.InvalidRequest("the last message must be the user's new message")
        content = service.check_content(_text(last))
        system = next((_text(m) for m in body.messages if m.role in ("system", "developer")), None)
        ticket = service.inflight.admit()  # 503 at once past the limit
        try:
            def prepare() -> tuple[Conversation, Chat]:  # one trip to a thread, not two
                conv = service.conversation_for_openai(user, conversation_id, system, body.model)
                return conv, service.prepare_turn(user, conv.name, content, idempotency_key)

            conv, chat = await service.run(prepare)
        except BaseException:
            ticket.release()
            raise
        temperature, max_tokens = body.temperature, body.max_completion_tokens or body.max_tokens
        created = int(time.time())
        headers = {CONVERSATION_HEADER: conv.name}

        if not body.stream:
            with ticket:
                reply, replayed = await cancel_on_disconnect(request.receive, service.send(
                    chat, content, idempotency_key, temperature=temperature,
                    max_tokens=max_tokens))
            response.headers.update(headers)
            if replayed:
                response.headers["Idempotent-Replayed"] = "true"
            return {
                "id": f"chatcmpl-{conv.name}-{reply.seq}", "object": "chat.completion",
                "created": created, "model": reply.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": _FINISH.get(reply.stop_reason or "", "stop"),
                             "logprobs": None}],
                "usage": _usage(reply), "colloquy": _extension(reply, conv.name),
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk_id = f"chatcmpl-{conv.name}-{conv.last_seq + 1}"

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                    "model": chat.model.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": None}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for event in service.stream(chat, content, idempotency_key,
                                                  temperature=temperature, max_tokens=max_tokens):
                    if isinstance(event, str):
                        yield chunk({"content": event})
                        continue
                    reply, _ = event
                    yield chunk({}, _FINISH.get(reply.stop_reason or "", "stop"),
                                colloquy=_extension(reply, conv.name))
                    if include_usage:
                        data = {"id": chunk_id, "object": "chat.completion.chunk",
                                "created": created, "model": reply.model, "choices": [],
                                "usage": _usage(reply)}
                        yield f"data: {json.dumps(data)}\n\n"
            except ColloquyError as e:
                status, kind = E.status_for(e)
                err = {"error": {"type": kind, "code": status, "message": redactor(str(e))}}
                yield f"data: {json.dumps(err)}\n\n"
            finally:
                ticket.release()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"},
                                 background=BackgroundTask(ticket.release))
