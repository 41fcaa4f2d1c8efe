"""The FastAPI application: routes that parse, authenticate, call the service, serialise.

Routes hold no logic of their own: ownership and turns are :class:`ChatService`'s, the flow of a
turn is :class:`colloquy.Chat`'s, persistence is the store's. Errors are translated in one place
(:data:`colloquy.server.errors.STATUS`), by the exception handlers installed here.
"""


import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..branches import Revision, superseded_by
from ..costs import side_calls_of
from ..context.seen import SeenContext
from ..errors import ColloquyError
from ..models import Model, ThinkingDelta
from ..store import Store, open_store
from ..store.users import User, UserStore, authenticate
from . import errors as E
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import exposition, metrics, token_ok
from .ratelimit import RateLimiter, RateStore
from .schemas import (
    ContextOut,
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationOut,
    ConversationPatch,
    DeleteOut,
    ErrorBody,
    FactCreate,
    FactList,
    FactOut,
    EditCreate,
    Health,
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IdempotencyKeyHeader,
    Me,
    MessageCreate,
    MessageOut,
    RegenerateCreate,
    ReplyOut,
)
from .hot import HotRoute, Serve, bearer_token, json_response
from .inflight import cancel_on_disconnect
from .service import Caller, ChatService, ServerSettings, replayed_header

log = logging.getLogger("colloquy.server")
STATIC = Path(__file__).with_name("static")

#: Error responses documented on every authenticated route.
#: The missing-token message, by whether the route is the Messages API's (whose SDK sends its
#: api_key as ``x-api-key``) or another (``Authorization: Bearer``).
_MISSING_TOKEN = {False: "missing bearer token: send 'Authorization: Bearer <token>'",
                  True: "missing API key: send your colloquy token as 'x-api-key: <token>'"}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request (e.g. a body that is not UTF-8 "
          "JSON) or one the server refuses (e.g. a model it does not offer)"},
    401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
    413: {"model": ErrorBody, "description": "body or message over the size limit"},
    422: {"model": ErrorBody, "description": "invalid request body or parameters"},
    429: {"model": ErrorBody, "description": "rate limit: see the Retry-After header"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such conversation (or not yours)"},
}
TURN_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "conflicting request (idempotency key in flight)"},
    422: {"model": ErrorBody, "description": "invalid body, or an idempotency key reused with "
          "another message (type idempotency_key_reused)"},
    502: {"model": ErrorBody, "description": "the model provider failed"},
    503: {"model": ErrorBody, "description": "the model is overloaded, rate limited or not configured"},
    504: {"model": ErrorBody, "description": "the model provider could not be reached"},
}
SSE_DOC = (
    "With `stream: true` the answer is `text/event-stream`: `event: delta` with data "
    '`{"text": ...}` for each piece (with thinking on, `event: thinking` with `{"text": ...}` '
    "pieces of the model's thinking come first), then `event: done` with the reply JSON "
    '(usage, cost, content blocks), or `event: error` with `{"error": {"type", "message"}}`.'
)


_to_json = json.JSONEncoder(ensure_ascii=False).encode  # built once: one per event costs
#: An Idempotency-Key header the turn routes accept (IdempotencyKeyHeader's rules).
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {_to_json(data)}\n\n"


def sse_delta(text: str) -> str:
    """``sse("delta", {"text": text})``, built without encoding a dict (one per delta)."""
    return f'event: delta\ndata: {{"text": {_to_json(text)}}}\n\n'


def error_json(error: BaseException, redactor: E.Redactor) -> dict[str, Any]:
    _, kind = E.status_for(error)
    return {"error": {"type": kind, "message": E.client_message(error, redactor)}}


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before the route reads them
    (by Content-Length when given, else by counting the streamed chunks)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit():
                if int(value) > self.limit:
                    await self._refuse(scope, send, int(value))
                    return
                # The server reads exactly Content-Length bytes: nothing to count, and no
                # wrapper on every chunk the response streams back.
                await self.app(scope, receive, send)
                return
        seen = 0
        over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise E.PayloadTooLarge(f"the request body is over {self.limit} bytes")
            return message

        async def answer(message: Message) -> None:
            # The framework turns a failed body read into its own 400; answer 413 instead.
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(scope, send, seen)

        await self.app(scope, limited, answer)

    async def _refuse(self, scope: Scope, send: Send, size: int) -> None:
        """413 in the route's error shape (a compatible route's SDK reads its own)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        flavour = E.error_flavour(scope.get("path", ""), headers)
        body = json.dumps(E.error_body(
            flavour, 413, "payload_too_large",
            f"the request body is over {self.limit} bytes ({size} received)")).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response that does not set them. A plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` would run each request in a task group of
    its own (CPU per request) and stand between a streaming body and its client's disconnect."""

    _headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in self._headers if k not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def create_app(
    store: Store | None = None,
    model: Model | str | None = None,
    *,
    settings: ServerSettings | None = None,
    db: str | None = None,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> FastAPI:
    """Build the service over a store (or ``db``, a URL as for the CLI) and a default model.

    ``options`` override :class:`ServerSettings` fields (``system``, ``rate_limit``,
    ``max_message_chars``, ``max_body_bytes``, ``allowed_models``, ``policy``, ``max_tokens``).
    """
    settings = settings or ServerSettings()
    known = {f.name for f in fields(ServerSettings)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown create_app options: {sorted(unknown)}")
    settings = replace(settings, **options)
    if model is not None:
        settings = replace(settings, model=model)
    store = store if store is not None else open_store(db, environ)
    redactor = E.Redactor.from_environ(environ)
    E.install_log_redaction(redactor)
    service = ChatService(store, settings, redactor)
    limiter = RateLimiter(settings.rate_limit, cast(RateStore, store)) \
        if settings.rate_limit else None

    app = FastAPI(
        title="colloquy",
        version=__version__,
        description="Chat with LLMs that remembers context: conversations, streaming turns, the "
        "next request's context, and an OpenAI-compatible endpoint. Authenticate with "
        "`Authorization: Bearer <token>` (tokens come from `colloquy users add NAME`).",
        docs_url=None,  # Swagger UI would load scripts from a CDN; /openapi.json is served.
        redoc_url=None,
    )
    app.state.service = service
    # At shutdown (after uvicorn's --drain-timeout has cut what was still running), let the cut
    # turns store their partial replies before the process exits.
    app.router.on_shutdown.append(service.inflight.settled)
    app.router.on_startup.append(service.sweeper.start)
    app.router.on_shutdown.append(service.sweeper.stop)
    app.state.store = store
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    _install_error_handlers(app, redactor)

    app.add_middleware(SecurityHeaders)

    users = cast(UserStore, store)  # every shipped store keeps the service's users

    def user_for(token: str) -> User:
        """The token's user, rate-limited (store reads: run on the service's threads)."""
        user = authenticate(users, token)
        if user is None:
            raise E.NotAuthenticated("invalid bearer token")
        if limiter is not None:
            limiter.check(user.id)  # one limit per user across processes (in the database)
        return user

    current_user = _TokenUser(lambda token: service.run(user_for, token))
    CurrentUser = Annotated[User, Depends(current_user)]
    # Routes are added to the app itself (no sub-routers), so app.routes lists every one of
    # them: the tests walk it to check auth, isolation and the OpenAPI description.
    api = _Routes(app, prefix="/v1", responses=AUTH_ERRORS)

    @api.get("/me", response_model=Me, summary="who the token belongs to")
    def me(user: CurrentUser) -> Me:
        return Me(user_id=user.id)

    @api.post("/conversations", status_code=201, response_model=ConversationOut,
              summary="start a conversation")
    async def create_conversation(body: ConversationCreate, user: CurrentUser) -> ConversationOut:
        # On the service's step pool, as a turn's steps, not on anyio's threads as a sync
        # route: its trip costs less CPU (bench/load.py's burst of first turns, issue 16).
        return ConversationOut.of(await service.run(partial(
            service.create, user, title=body.title, system=body.system, model=body.model)))

    @api.get("/conversations", response_model=ConversationList,
             summary="the caller's conversations, newest activity first")
    def list_conversations(
        user: CurrentUser, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> ConversationList:
        return ConversationList(
            conversations=[ConversationOut.of(c) for c in service.conversations(user, limit)])

    @api.get("/conversations/{conversation_id}", response_model=ConversationDetail,
             responses=NOT_FOUND, summary="a conversation with its messages")
    def get_conversation(conversation_id: str, user: CurrentUser) -> ConversationDetail:
        conv, messages = service.detail(user, conversation_id)
        gone = superseded_by(messages)
        return ConversationDetail(**ConversationOut.of(conv).model_dump(),
                                  messages=[MessageOut.of(m, gone.get(m.seq)) for m in messages],
                                  side_calls=side_calls_of(conv))

    @api.patch("/conversations/{conversation_id}", response_model=ConversationOut,
               responses=NOT_FOUND, summary="rename a conversation")
    def rename_conversation(conversation_id: str, body: ConversationPatch,
                            user: CurrentUser) -> ConversationOut:
        return ConversationOut.of(service.rename(user, conversation_id, body.title))

    @api.delete("/conversations/{conversation_id}", status_code=204, responses=NOT_FOUND,
                summary="delete a conversation and its messages")
    def delete_conversation(conversation_id: str, user: CurrentUser) -> Response:
        service.delete(user, conversation_id)
        return Response(status_code=204)

    async def answer(conversation_id: str, content: str | None, key: str | None, stream: bool,
                     user: User | Caller, request: Request, response: Response,
                     revise: Revision | None = None, thinking: int | None = None,
                     target: int | None = None) -> Any:
        """A turn for one of the turn routes: JSON, or server-sent events with ``stream``;
        ``thinking``: the request's own thinking budget (Chat.send's); ``target``: the seq an
        edit or regeneration is meant for (Chat.send's). A :class:`Caller` (the hot route's
        token, looked up in the turn's first step) only for a JSON turn."""
        ticket = service.inflight.admit()  # 503 at once past the limit
        if not stream:
            with ticket:
                reply, replayed = await cancel_on_disconnect(
                    request.receive, service.send_named(user, conversation_id, content, key,
                                                        revise=revise, thinking=thinking,
                                                        target=target))
            response.headers.update(replayed_header(replayed))
            return ReplyOut.of(reply, replayed=replayed, name=conversation_id)
        assert not isinstance(user, Caller)
        try:
            chat, replay = await service.turn_chat(user, conversation_id, content, key,
                                                   revise, target)
        except BaseException:
            ticket.release()
            raise

        async def events() -> AsyncIterator[str]:
            # A disconnect cancels this body (Starlette), which stops the turn (colloquy.effects).
            try:
                async for event in service.stream(chat, content, key, revise=revise,
                                                  thinking=thinking, target=target):
                    if isinstance(event, str):
                        yield sse_delta(event)
                    elif isinstance(event, ThinkingDelta):
                        if event.thinking:  # (a signature is no text to show)
                            yield sse("thinking", {"text": event.thinking})
                    else:
                        reply, replayed = event
                        yield sse("done", ReplyOut.of(reply, replayed=replayed,
                                                      name=conversation_id).model_dump(mode="json"))
            except ColloquyError as e:
                _log_error(e, redactor)
                yield sse("error", error_json(e, redactor))
            except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
                log.error("turn failed: %s", redactor(f"{type(e).__name__}: {e}"))
                yield sse("error", {"error": {"type": "server_error", "message": "internal error"}})
            finally:
                ticket.release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                          **replayed_header(replay)},
                                 background=BackgroundTask(ticket.release))

    TURN_RESPONSES: dict[int | str, dict[str, Any]] = {**NOT_FOUND, **TURN_ERRORS, 200: {
        "description": "the reply (JSON), or with `stream: true` server-sent events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}}}

    @api.post("/conversations/{conversation_id}/messages", response_model=ReplyOut,
              responses=TURN_RESPONSES, description=SSE_DOC,
              summary="send a message; get the reply (JSON or server-sent events)")
    async def send_message(conversation_id: str, body: MessageCreate, user: CurrentUser,
                           request: Request, response: Response,
                           idempotency_key: IdempotencyKeyHeader = None) -> Any:
        key = service.idempotency_key(idempotency_key, body.idempotency_key)
        return await answer(conversation_id, body.content, key, body.stream, user, request,
                            response, thinking=body.thinking)

    async def send_message_hot(request: Request, token: str, body: MessageCreate
                               ) -> Response | None:
        """send_message's JSON turn, its token looked up in the turn's first step (see
        colloquy.server.hot); a stream, a header the route would question, or a turn past
        max_inflight goes to it (which looks the token up first: 401 or 429 before 503)."""
        header = request.headers.get(IDEMPOTENCY_HEADER)
        if body.stream or service.inflight.full or header is not None and not (
                len(header) <= 128 and _KEY.fullmatch(header)
                and body.idempotency_key in (None, header)):
            return None
        reply = await answer(request.path_params["conversation_id"], body.content,
                             header or body.idempotency_key, False, Caller(token, user_for),
                             request, Response(), thinking=body.thinking)
        return json_response(reply, headers=replayed_header(reply.replayed))

    async def create_conversation_hot(request: Request, token: str, body: ConversationCreate
                                      ) -> Response:
        """create_conversation with the token looked up in the same trip (colloquy.server.hot)."""
        conv = await service.run(partial(service.create, Caller(token, user_for),
                                         title=body.title, system=body.system, model=body.model))
        return json_response(ConversationOut.of(conv), status_code=201)

    def hot(path: str, body: type[BaseModel], serve: Serve) -> None:
        route = next(r for r in app.routes if isinstance(r, APIRoute)
                     and r.path == "/v1" + path and "POST" in (r.methods or ()))
        app.router.routes.insert(0, HotRoute(route, body, serve))

    if settings.hot_routes:
        hot("/conversations/{conversation_id}/messages", MessageCreate, send_message_hot)
        hot("/conversations", ConversationCreate, create_conversation_hot)

    @api.post("/conversations/{conversation_id}/edit", response_model=ReplyOut,
              responses=TURN_RESPONSES, summary="replace the newest user message and answer it",
              description="A new turn is appended; the turn it replaces stays in the log, marked "
              "superseded (`superseded_by` in the conversation's messages), and is shown to no "
              "model again. 409 when the conversation has no turn yet, or (edit_conflict) when "
              "`seq` names a message that is no longer the newest user message. " + SSE_DOC)
    async def edit_last(conversation_id: str, body: EditCreate, user: CurrentUser,
                        request: Request, response: Response,
                        idempotency_key: IdempotencyKeyHeader = None) -> Any:
        key = service.idempotency_key(idempotency_key, body.idempotency_key)
        return await answer(conversation_id, body.content, key, body.stream, user, request,
                            response, revise="edit", thinking=body.thinking, target=body.seq)

    @api.post("/conversations/{conversation_id}/regenerate", response_model=ReplyOut,
              responses=TURN_RESPONSES, summary="answer the newest user message again",
              description="A new turn with the same user message is appended; the turn it "
              "replaces stays in the log, marked superseded. 409 when the conversation has no "
              "turn yet, or (edit_conflict) when `seq` names a reply no longer in the newest "
              "turn. " + SSE_DOC)
    async def regenerate(conversation_id: str, body: RegenerateCreate, user: CurrentUser,
                         request: Request, response: Response,
                         idempotency_key: IdempotencyKeyHeader = None) -> Any:
        key = service.idempotency_key(idempotency_key, body.idempotency_key)
        return await answer(conversation_id, None, key, body.stream, user, request, response,
                            revise="regenerate", thinking=body.thinking, target=body.seq)

    @api.get("/conversations/{conversation_id}/messages/{seq}/context",
             response_model=SeenContext, responses={404: {
                 "model": ErrorBody, "description": "no such conversation (or not yours), or the "
                 "message has no record of its context (not a reply, or stored before colloquy "
                 "kept them)"}},
             summary="what the model was sent for one reply, from the record stored with it")
    def context_seen(conversation_id: str, seq: int, user: CurrentUser) -> SeenContext:
        return service.context_seen(user, conversation_id, seq)

    @api.get("/conversations/{conversation_id}/context", response_model=ContextOut,
             responses=NOT_FOUND, summary="exactly the request the next turn would send")
    def get_context(
        conversation_id: str, user: CurrentUser,
        message: Annotated[str | None, Query(max_length=200_000,
                                             description="include this new user message")] = None,
    ) -> ContextOut:
        request, tokens = service.context(user, conversation_id, message)
        return ContextOut(request=request, input_tokens=tokens)

    @api.get("/me/export", summary="everything held about the caller, as JSON",
             response_description="the colloquy.user-export document (what `colloquy users "
             "import` restores)")
    def export_me(user: CurrentUser) -> JSONResponse:
        return JSONResponse(service.export(user), headers={
            "Content-Disposition": f'attachment; filename="colloquy-{user.id}.json"',
            "Cache-Control": "no-store"})

    @api.delete("/me", response_model=DeleteOut,
                summary="delete every conversation, message and fact of the caller, and the "
                "caller's account (the token stops working)")
    def delete_me(user: CurrentUser) -> DeleteOut:
        report = service.delete_me(user)
        return DeleteOut(user_id=user.id, conversations=report.conversations, rows=report.rows,
                         erasure=report.erasure)

    FACT_NOT_FOUND: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorBody, "description": "no such fact (or not yours)"}}

    @api.get("/memory", response_model=FactList, summary="the facts remembered about the caller")
    def list_facts(user: CurrentUser) -> FactList:
        facts, names = service.facts(user)
        return FactList(facts=[FactOut.of(f, names) for f in facts])

    @api.post("/memory", status_code=201, response_model=FactOut,
              summary="remember a fact (the same fact twice is kept once)")
    def add_fact(body: FactCreate, user: CurrentUser) -> FactOut:
        return FactOut.of(service.add_fact(user, body.statement, body.subject))

    @api.delete("/memory/{fact_id}", status_code=204, responses=FACT_NOT_FOUND,
                summary="forget a fact for good")
    def forget_fact(fact_id: str, user: CurrentUser) -> Response:
        service.forget_fact(user, fact_id)
        return Response(status_code=204)

    from .openai_compat import add_openai_routes

    add_openai_routes(_Routes(app, prefix="/v1", responses=AUTH_ERRORS, tags=["openai-compatible"]),
                      service, current_user, redactor)
    from .anthropic_compat import add_anthropic_routes

    add_anthropic_routes(_Routes(app, prefix="/v1", responses=AUTH_ERRORS,
                                 tags=["anthropic-compatible"]), service, current_user, redactor)

    if settings.metrics or settings.metrics_token:
        metrics()  # this process's series, subscribed to colloquy's telemetry
    if settings.metrics_token:
        token = settings.metrics_token

        @app.get("/metrics", include_in_schema=False)
        def prometheus(request: Request) -> Response:
            """The service's Prometheus series (colloquy.server.metrics), to the metrics token."""
            if not token_ok(request.headers.get("authorization"), token):
                return JSONResponse({"error": {"type": "not_authenticated", "message":
                                               "send 'Authorization: Bearer <metrics token>'"}},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return Response(exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz", response_model=Health, summary="liveness (no authentication)")
    def healthz() -> Health:
        return Health(version=__version__)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _Routes:
    """Route decorators on the app with a common path prefix and documented responses."""

    def __init__(self, app: FastAPI, prefix: str, responses: dict[int | str, dict[str, Any]],
                 tags: list[str] | None = None) -> None:
        self.app, self.prefix, self.responses, self.tags = app, prefix, responses, tags

    def _route(self, method: str, path: str, **kw: Any) -> Callable[[Any], Any]:
        kw["responses"] = {**self.responses, **kw.get("responses", {})}
        if self.tags:
            kw.setdefault("tags", self.tags)
        return self.app.api_route(self.prefix + path, methods=[method], **kw)

    def get(self, path: str, **kw: Any) -> Callable[[Any], Any]:
        return self._route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Any], Any]:
        return self._route("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Any], Any]:
        return self._route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Any], Any]:
        return self._route("DELETE", path, **kw)


class _TokenUser(HTTPBearer):
    """The routes' one authentication dependency: the caller's :class:`User` from the request's
    bearer token (or ``x-api-key``, as the anthropic SDK sends it), 401 without a valid one.

    One dependency reading the headers itself, not HTTPBearer and a Header parameter under it:
    each layer FastAPI solves costs CPU on every request (bench/load.py's profile, issue 16).
    Still an HTTPBearer to FastAPI, so the OpenAPI description keeps its ``HTTPBearer`` scheme.
    """

    def __init__(self, lookup: Callable[[str], Awaitable[User]]) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer",
                         description="a token from `colloquy users add NAME`")
        self._lookup = lookup

    async def __call__(self, request: Request) -> User:  # type: ignore[override]
        # The lookup runs on the service's own pool (loop.run_in_executor), not as a sync
        # dependency on anyio's, whose trip costs more CPU per request.
        token = bearer_token(request)
        if not token:
            raise E.NotAuthenticated(_MISSING_TOKEN[E.error_flavour(
                request.url.path, request.headers) == "anthropic"])
        return await self._lookup(token)


def _log_error(error: BaseException, redactor: E.Redactor) -> None:
    status, kind = E.status_for(error)
    if status >= 500:
        log.warning("%s (%s): %s", kind, status, redactor(str(error)))


def _install_error_handlers(app: FastAPI, redactor: E.Redactor) -> None:
    def answer(request: Request, status: int, kind: str, message: str, *,
               param: str | None = None, details: list[dict[str, Any]] | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
        flavour = E.error_flavour(request.url.path, request.headers)
        return JSONResponse(E.error_body(flavour, status, kind, message, param, details),
                            status_code=status, headers=headers)

    async def colloquy_error(request: Request, exc: Exception) -> JSONResponse:
        status, kind = E.status_for(exc)
        _log_error(exc, redactor)
        headers: dict[str, str] = {}
        wait = E.retry_after(exc)
        if wait is not None and status in (409, 429, 503):
            headers["Retry-After"] = str(wait)
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return answer(request, status, kind, E.client_message(exc, redactor),
                      param=getattr(exc, "param", None), headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in exc.errors()]
        message = "; ".join(
            f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details) or "invalid request"
        # The compatible APIs answer a malformed request with 400 (their SDKs' BadRequestError).
        native = E.error_flavour(request.url.path, request.headers) == "native"
        param = ".".join(str(p) for p in details[0]["loc"][1:]) if details else None
        return answer(request, 422 if native else 400, "invalid_request", redactor(message),
                      param=param or None, details=details)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {400: "invalid_request", 404: "not_found",
                405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # The router names only the first route matching the path; list them all.
            headers["Allow"] = ", ".join(sorted({
                m for r in request.app.routes if isinstance(r, APIRoute)
                and r.path_regex.match(request.url.path) for m in (r.methods or ())}))
        return answer(request, exc.status_code, kind, str(exc.detail), headers=headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s: %s", request.method, request.url.path,
                  redactor(f"{type(exc).__name__}: {exc}"))
        return answer(request, 500, "server_error", "internal error")

    app.add_exception_handler(ColloquyError, colloquy_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
