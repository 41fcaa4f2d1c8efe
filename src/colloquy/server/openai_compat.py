"""``POST /v1/chat/completions`` and ``GET /v1/models``: the OpenAI protocol, with memory.

An OpenAI client sends its conversation; colloquy keeps it. The request is split into the
history the client replays and the new user message (colloquy.server.compat): only the new
message is stored and answered, with the persona, the memory and the trimmed history from the
store, exactly as ``POST /v1/conversations/{id}/messages`` does. The conversation is the one the
client names (header ``X-Colloquy-Conversation``, ``metadata.conversation_id`` or the ``user``
field), else the one its replayed history continues (a client like ``llm`` names none). A
system message is the persona of a conversation created by the request.

What OpenAI clients send is taken as they send it (colloquy.openai_shape): image_url parts (data
and http(s) URLs), PDF file parts, ``tools`` the client runs itself (the model's calls come back
as ``tool_calls``, finish_reason ``tool_calls``; the client's ``tool`` messages are the next
turn's message), errors in OpenAI's shape (``error.type``, ``code``, ``param``), a model the
server does not offer is 404 ``model_not_found``, ``n`` above 1 is refused, streamed chunks share
one id of the same scheme as a non-streamed completion, ``stream_options.include_usage`` adds the
usage chunk.
"""


import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..chat import Reply
from ..errors import ColloquyError, InvalidTextError
from ..models import ToolSpec
from ..openai_shape import OpenAIShapeError, from_openai_messages, tool_calls, tools_from_openai
from ..store.users import User
from ..turn_options import OPENAI_API
from . import errors as E
from .compat import (CONVERSATION_HEADER, ConversationHeader, client_name, ignored_note,
                     split_turn, tool_choice, turn_responses)
from .inflight import cancel_on_disconnect
from .schemas import ChatCompletionRequest, ErrorBody, IdempotencyKeyHeader
from .service import ChatService, replayed_header

#: OpenAI's finish_reason for each stop reason (any other, a provider's newer one included,
#: is "stop"; the colloquy field carries the stop_reason as the provider said it).
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "model_context_window_exceeded": "length", "tool_use": "tool_calls",
           "refusal": "content_filter", "guard": "content_filter"}


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


def _extension(reply: Reply, name: str, notes: list[str]) -> dict[str, Any]:
    """colloquy's own fields, beside OpenAI's (clients ignore what they do not know); the
    conversation is named as the client named it (or as colloquy found it); ``notes``: the
    route's own, after the turn's."""
    return {"conversation_id": name, "seq": reply.seq, "cost_usd": reply.cost_usd,
            "usage": reply.usage.model_dump(), "stop_reason": reply.stop_reason,
            "notes": [*reply.notes, *notes]}


def _finish(reply: Reply) -> str:
    if reply.message.tool_uses and reply.stop_reason == "tool_use":
        return "tool_calls"
    return _FINISH.get(reply.stop_reason or "", "stop")


def completion_id(conversation: str) -> str:
    """One id per completion, streamed or not: ``chatcmpl-<conversation>-<random>``."""
    return f"chatcmpl-{conversation}-{secrets.token_hex(6)}"


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "colloquy"}


def _anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name,
            "created_at": "1970-01-01T00:00:00Z"}


def add_openai_routes(
    routes: Any, service: ChatService, current_user: Callable[..., Any], redactor: E.Redactor
) -> None:
    """Add the routes to the app through its route helper (``routes.post``, ``routes.get``)."""

    @routes.get("/models", summary="the models this server offers (OpenAI's or, with the "
                "anthropic-version header, Anthropic's list shape)")
    def list_models(request: Request, user: Annotated[User, Depends(current_user)]) -> Any:
        names = service.model_names
        if "anthropic-version" in request.headers:  # the anthropic SDK's models.list()
            return {"data": [_anthropic_model(n) for n in names], "has_more": False,
                    "first_id": names[0] if names else None,
                    "last_id": names[-1] if names else None}
        return {"object": "list", "data": [_model_object(n) for n in names]}

    @routes.get("/models/{model_id}", summary="one model this server offers",
                responses={404: {"model": ErrorBody}})
    def get_model(model_id: str, request: Request,
                  user: Annotated[User, Depends(current_user)]) -> Any:
        service.offered_model(model_id)
        if "anthropic-version" in request.headers:
            return _anthropic_model(model_id)
        return _model_object(model_id)

    @routes.post(
        "/chat/completions",
        summary="OpenAI-compatible chat completion over a stored conversation",
        description=(
            "Send the conversation as OpenAI clients do; only the new user message (or tool "
            "results) is stored and answered. Name the conversation with the "
            f"`{CONVERSATION_HEADER}` header, `metadata.conversation_id` or `user` (created on "
            "first use), or name none: the replayed history finds it. With `stream: true`, "
            "OpenAI `chat.completion.chunk` events end with `data: [DONE]`. An "
            "`Idempotency-Key` header makes a retried request answered once."
        ),
        responses=turn_responses("a chat.completion object, or chunks when streaming"),
    )
    async def chat_completions(
        body: ChatCompletionRequest,
        user: Annotated[User, Depends(current_user)],
        request: Request,
        response: Response,
        x_colloquy_conversation: ConversationHeader = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Any:
        if body.n is not None and body.n > 1:
            raise E.InvalidRequest("n above 1 is not supported: a conversation keeps one reply "
                                   "per turn (send the request again for another)", param="n")
        service.offered_model(body.model)
        try:
            system, messages = from_openai_messages(
                [m.model_dump(exclude_none=True) for m in body.messages])
            tools: list[ToolSpec] = tools_from_openai(body.tools) if body.tools else []
            choice = tool_choice(body.tool_choice, tools, openai=True,
                                 parallel_tool_calls=body.parallel_tool_calls)
        except OpenAIShapeError as e:
            raise E.InvalidRequest(str(e), param=e.param) from e
        except InvalidTextError:  # an empty message: 422 like a blank one, on every route
            raise
        except ValueError as e:  # a block the content model refuses (e.g. invalid text)
            raise E.InvalidRequest(str(e), param="messages") from e
        history, content = split_turn(messages)
        service.check_message(content)  # before a conversation is created for it
        named = client_name((CONVERSATION_HEADER, x_colloquy_conversation),
                            ("metadata.conversation_id",
                             (body.metadata or {}).get("conversation_id")),
                            ("user", body.user))
        conv, chat, ticket, replay = await service.client_turn(
            user, named, system, history, content, body.model, idempotency_key, OPENAI_API)
        options: dict[str, Any] = {
            "api": OPENAI_API, "temperature": body.temperature,
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "thinking": body.thinking, "tools": tools, "tool_choice": choice}
        created = int(time.time())
        ignored = ignored_note(body.model_extra)
        headers = {CONVERSATION_HEADER: conv.name}
        cid = completion_id(conv.name)

        if not body.stream:
            with ticket:
                reply, replayed = await cancel_on_disconnect(request.receive, service.send(
                    chat, content, idempotency_key, **options))
            response.headers.update({**headers, **replayed_header(replayed)})
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            calls = tool_calls(reply.message)
            if calls:
                message.update(content=reply.text or None, tool_calls=calls)
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": reply.model,
                "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply),
                             "logprobs": None}],
                "usage": _usage(reply), "colloquy": _extension(reply, conv.name, ignored),
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": chat.model.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": None}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for event in service.stream(chat, content, idempotency_key, **options):
                    if isinstance(event, str):
                        yield chunk({"content": event})
                        continue
                    if not isinstance(event, tuple):
                        continue  # thinking: not part of OpenAI's chunk format
                    reply, _ = event
                    calls = tool_calls(reply.message)
                    if calls:
                        yield chunk({"tool_calls": [{"index": i, **c}
                                                    for i, c in enumerate(calls)]})
                    yield chunk({}, _finish(reply), colloquy=_extension(reply, conv.name, ignored))
                    if include_usage:
                        data = {"id": cid, "object": "chat.completion.chunk",
                                "created": created, "model": reply.model, "choices": [],
                                "usage": _usage(reply)}
                        yield f"data: {json.dumps(data)}\n\n"
            except ColloquyError as e:
                status, kind = E.status_for(e)
                err = E.error_body("openai", status, kind, E.client_message(e, redactor),
                                   getattr(e, "param", None))
                yield f"data: {json.dumps(err)}\n\n"
            finally:
                ticket.release()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache",
                                          **replayed_header(replay)},
                                 background=BackgroundTask(ticket.release))
