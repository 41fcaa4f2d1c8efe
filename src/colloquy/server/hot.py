"""The service's hot routes answered without FastAPI's per-request machinery.

Two requests make nearly all of a chat service's traffic: a JSON turn (``POST
/v1/conversations/{name}/messages``) and a new conversation (``POST /v1/conversations``). For
each, FastAPI solves the route's dependencies and parameters (the token, the path, the
``Idempotency-Key`` header, the body) and validates the response again: about 0.3 ms of CPU a
request, a sixth of a JSON turn (issue 16, bench/load.py's profile); and the token's lookup was
a trip to a thread of its own before the route's work made another.

A :class:`HotRoute` sits before the FastAPI route of the same path and method and answers the
common case itself: a bearer token, a ``Content-Type: application/json`` body that validates as
the route's body model, and whatever the route's ``serve`` accepts (a turn: not a stream, an
``Idempotency-Key`` header the route would accept). The token is looked up in the first step of
the route's work on the step pool (:class:`colloquy.server.service.Caller`). Every other
request, including every one the FastAPI route would refuse, goes on to that route, its body
replayed: so its answers (401 before 422, the error shapes) and the OpenAPI description stay the
FastAPI route's own. Errors raised while serving go to the app's exception handlers, as a
route's do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

#: Answers one request whose token and body are known good (None: leave it to the FastAPI
#: route): the request, its bearer token, its validated body.
Serve = Callable[[Request, str, Any], Awaitable[Response | None]]


def bearer_token(request: Request) -> str:
    """The request's token as the routes' authentication reads it: ``Authorization: Bearer``,
    else ``x-api-key`` (the anthropic SDK's); "" when there is none."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() != "bearer" or not token:
        token = request.headers.get("x-api-key", "")
    return token


class HotRoute(Route):
    """``route``'s path and methods, answered by ``serve`` when it can (see the module
    docstring), by ``route`` itself otherwise. Not in the OpenAPI description: ``route`` is."""

    def __init__(self, route: APIRoute, body: type[BaseModel], serve: Serve) -> None:
        super().__init__(route.path, route.endpoint, methods=sorted(route.methods or ()),
                         include_in_schema=False)
        self.route = route
        self.body = body
        self.serve = serve

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        # Another method on this path: the FastAPI routes decide (405 with their Allow header).
        return (match, child) if match is Match.FULL else (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        raw = await request.body()
        response = None
        token = bearer_token(request)
        if token and _is_json(request):
            try:
                body = self.body.model_validate(json.loads(raw))
            # The FastAPI route says what is wrong (nesting too deep for the parser included).
            except (ValueError, ValidationError, RecursionError):
                body = None
            if body is not None:
                response = await self.serve(request, token, body)
        if response is None:
            _, child = self.route.matches(scope)  # the scope the FastAPI route expects
            await self.route.handle({**scope, **child}, _replay(raw, receive), send)
        else:
            await response(scope, receive, send)


def _is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.partition(";")[0].strip().lower() == "application/json"


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read given again first."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def json_response(model: BaseModel, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """``model`` as FastAPI answers a route's ``response_model`` (pydantic's JSON, by alias)."""
    return Response(model.model_dump_json(by_alias=True), status_code=status_code,
                    headers=headers, media_type="application/json")


__all__ = ["HotRoute", "Serve", "bearer_token", "json_response"]
