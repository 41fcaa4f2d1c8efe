"""Streamed text deltas coalesced where the client cannot see the difference.

A model's deltas often arrive faster than one server-sent event each can be written: an SDK
reads several from one network read, and a busy worker's event loop runs late, so by the time
the response's writer is ready again more deltas are waiting. Sending those as one event
changes nothing the client can see (it would have read them in the same instant) and spares the
whole path of an event (the SSE encoding, the framework's send chain, the socket write) for each
delta but one. A delta that arrives while the writer waits still goes out at once: coalescing
never holds text back (issue 16: streaming at the cost of the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio

from ..models.base import TextPiece

T = TypeVar("T")


def _block(piece: str) -> tuple[int, int] | None:
    """The content block a text delta belongs to (colloquy.models.TextPiece): a run is joined
    within one block only, so a route that re-streams blocks still tells them apart."""
    return (piece.call, piece.block) if isinstance(piece, TextPiece) else None


def _joined(run: list[str]) -> str:
    first = run[0]
    if len(run) == 1:
        return first
    text = "".join(run)
    return TextPiece(text, first.block, first.call) if isinstance(first, TextPiece) else text


async def coalesced(source: AsyncIterator[str | T]) -> AsyncIterator[str | T]:
    """``source``'s events in order, each run of text deltas of one content block that were
    all waiting when the consumer came back for more joined into one string. ``source`` is read by a task of its own
    (in a copy of the caller's context), so it runs ahead of a slow consumer; its error is
    raised here after the events before it. Closing or cancelling this iterator cancels that
    task and waits for it (a turn stores its partial reply then, colloquy.effects)."""
    items: deque[list[str] | T] = deque()  # a run of text as a list, or another event
    wake = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for event in source:
                if isinstance(event, str):
                    if items and isinstance(items[-1], list) and _block(items[-1][0]) == _block(event):
                        items[-1].append(event)
                    else:
                        items.append([event])
                else:
                    items.append(event)
                wake.set()
        except BaseException as e:  # noqa: BLE001 - raised by the consumer, in order
            failure.append(e)
        finally:
            finished = True
            wake.set()

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            await wake.wait()
            wake.clear()
            while items:
                item = items.popleft()
                yield _joined(item) if isinstance(item, list) else item
            if finished:
                if failure:
                    raise failure[0]
                return
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await task
