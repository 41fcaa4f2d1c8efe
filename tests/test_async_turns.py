"""The async API's turns (colloquy.effects): a turn waiting on the model holds no thread, the
SDKs' async clients are used, and a caller that goes away stops the model call and keeps the
partial reply (sync streams closed early, asyncio tasks cancelled), across models and stores."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from colloquy import Chat, EchoModel, MemoryStore, SQLiteStore
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.base import Model, ModelRequest, ModelResponse, StreamEvent, TextDelta
from colloquy.models.openai import OpenAIModel
from colloquy.messages import TextBlock
from colloquy.store import Store
from colloquy.usage import Usage
from fake_anthropic import FakeAnthropic, Reply, stream_events, text
from fake_openai import FakeOpenAI, Turn

KEY = "sk-ant-test-0123456789-secret"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    yield s
    s.close()


class Gathering(Model):
    """An async-only model whose calls all wait until ``n`` of them are waiting at once: with
    turns that held a thread each, a pool of 2 threads could never gather 40."""

    name = "gathering"
    provider = "offline"

    def __init__(self, n: int) -> None:
        self.n = n
        self.waiting = 0
        self.most = 0
        self.all_here: asyncio.Event | None = None

    def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("the async API must not use the sync call")

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        if self.all_here is None:
            self.all_here = asyncio.Event()
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        if self.waiting >= self.n:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), 20)
        self.waiting -= 1
        return ModelResponse(content=[TextBlock(text="together")], usage=Usage(output_tokens=1))


def test_turns_waiting_on_the_model_hold_no_thread(store: Store) -> None:
    model = Gathering(40)
    steps = ThreadPoolExecutor(2)

    async def main() -> list[str]:
        chats = [Chat(model, store=store, session_id=f"c{i}", executor=steps) for i in range(40)]
        replies = await asyncio.gather(*(c.asend("hello") for c in chats))
        return [r.text for r in replies]

    assert asyncio.run(main()) == ["together"] * 40
    assert model.most == 40
    steps.shutdown()


def test_the_echo_latency_is_awaited_not_slept() -> None:
    """``echo?latency=N`` under the async API waits on the event loop: 50 turns of 0.5 s on
    a pool of one thread end together, not one after the other."""
    steps = ThreadPoolExecutor(1)
    store = MemoryStore()
    model = EchoModel(latency=0.5)

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(Chat(model, store=store, session_id=f"c{i}", executor=steps)
                               .asend("hi") for i in range(50)))
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 0.5 * 10  # serialised it would take 25 s
    steps.shutdown()


def test_async_stream_gives_the_same_turn_as_the_sync_one(store: Store) -> None:
    sync = Chat(EchoModel(), store=store, session_id="sync")
    sync_events = list(sync.stream("one two three"))

    async def main() -> list[object]:
        chat = Chat(EchoModel(), store=store, session_id="async")
        return [e async for e in chat.astream("one two three")]

    async_events = asyncio.run(main())
    assert [e for e in async_events if isinstance(e, str)] == [
        e for e in sync_events if isinstance(e, str)]
    assert [m.message for m in store.load("sync")] == [m.message for m in store.load("async")]


def test_a_busy_conversation_is_waited_for_without_a_thread(store: Store) -> None:
    """Another process's turn holds the conversation (its store lock): the async turn waits on
    the event loop, so another conversation's turn goes through the one step thread meanwhile."""
    steps = ThreadPoolExecutor(1)
    release = store.try_lock("busy")  # type: ignore[attr-defined]
    assert release is not None

    async def main() -> list[str]:
        waiting = asyncio.create_task(
            Chat(EchoModel(), store=store, session_id="busy", executor=steps).asend("queued"))
        free = await asyncio.wait_for(
            Chat(EchoModel(), store=store, session_id="free", executor=steps).asend("now"), 10)
        assert not waiting.done()
        release()
        return [free.text, (await asyncio.wait_for(waiting, 10)).text]

    free, queued = asyncio.run(main())
    assert "'now'" in free and "'queued'" in queued
    steps.shutdown()


# -- cancellation ---------------------------------------------------------------------------------


class Slow(Model):
    """Streams a word every ``pace`` seconds, forever (until its caller goes away); records
    whether its stream was closed."""

    name = "slow"
    provider = "offline"

    def __init__(self, pace: float = 0.02) -> None:
        self.pace = pace
        self.closed = threading.Event()

    def request(self, request: ModelRequest) -> ModelResponse:
        time.sleep(3600)
        raise AssertionError("unreachable")

    def stream(self, request: ModelRequest) -> Iterator[StreamEvent]:
        try:
            while True:
                time.sleep(self.pace)
                yield TextDelta(text="word ")
        finally:
            self.closed.set()

    async def arequest(self, request: ModelRequest) -> ModelResponse:
        try:
            await asyncio.sleep(3600)
        finally:
            self.closed.set()
        raise AssertionError("unreachable")

    async def astream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        try:
            while True:
                await asyncio.sleep(self.pace)
                yield TextDelta(text="word ")
        finally:
            self.closed.set()


def _cancelled_reply(store: Store, cid: str) -> tuple[str, Usage, dict[str, object]]:
    last = store.load(cid)[-1]
    assert last.role == "assistant"
    assert last.usage is not None
    return last.message.text, last.usage, last.meta


def test_closing_a_sync_stream_stops_the_model_and_keeps_the_partial_reply(store: Store) -> None:
    model = Slow()
    chat = Chat(model, store=store, session_id="c")
    events = chat.stream("tell me a long story")
    got = [next(events), next(events), next(events)]
    events.close()
    assert model.closed.is_set()
    partial, usage, meta = _cancelled_reply(store, "c")
    assert partial == "".join(got)
    assert meta["stop_reason"] == "cancelled" and meta["usage_estimated"] is True
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    # The conversation goes on, and the lock was released.
    chat.model = EchoModel()
    assert "received 3 messages" in chat.send("go on").text  # user, partial reply, user


def test_cancelling_an_async_turn_stops_the_model_and_bills_the_call(store: Store) -> None:
    model = Slow()

    async def main() -> None:
        chat = Chat(model, store=store, session_id="c")
        task = asyncio.create_task(chat.asend("hello"))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.perf_counter() - t0 < 1.0
        assert model.closed.is_set()

    asyncio.run(main())
    partial, usage, meta = _cancelled_reply(store, "c")
    assert partial == "" and meta["stop_reason"] == "cancelled"
    assert usage.input_tokens > 0  # the provider bills the prompt of a cut call too
    # An empty partial reply never reaches the next request.
    chat = Chat(EchoModel(), store=store, session_id="c")
    chat.send("again")
    assert [m.role for m in chat.model.last_request.messages] == ["user"]  # type: ignore[attr-defined]


def test_cancelling_an_async_stream_keeps_the_text_received(store: Store) -> None:
    model = Slow()

    async def main() -> str:
        chat = Chat(model, store=store, session_id="c")
        seen: list[str] = []

        async def consume() -> None:
            async for event in chat.astream("hello"):
                if isinstance(event, str):
                    seen.append(event)

        task = asyncio.create_task(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return "".join(seen)

    seen = asyncio.run(main())
    partial, _, meta = _cancelled_reply(store, "c")
    assert meta["stop_reason"] == "cancelled"
    assert partial.startswith(seen)  # at most the delta in flight was not delivered


def test_a_cancelled_turn_releases_its_lock_for_the_next(store: Store) -> None:
    async def main() -> str:
        chat = Chat(Slow(), store=store, session_id="c")
        task = asyncio.create_task(chat.asend("first"))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        chat.model = EchoModel()
        return (await asyncio.wait_for(chat.asend("second"), 10)).text

    assert "second" in asyncio.run(main())


# -- the SDKs' async clients, cut at the wire ----------------------------------------------------------


def _slow_anthropic_stream() -> Reply:
    events = stream_events(text("one two three four five six seven eight"), chunk=4)
    return Reply(events=events, event_delay=0.2)


def test_anthropic_async_stream_is_cut_at_the_wire_when_cancelled() -> None:
    with FakeAnthropic(api_key=KEY) as fake:
        fake.enqueue(_slow_anthropic_stream())
        model = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=0)
        store = MemoryStore()

        async def main() -> float:
            chat = Chat(model, store=store, session_id="c")
            first = asyncio.Event()

            async def consume() -> None:
                async for event in chat.astream("hello"):
                    if isinstance(event, str):
                        first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return time.monotonic()

        cancelled_at = asyncio.run(main())
        assert fake.drops.wait(5), "the fake never saw the connection dropped"
        assert fake.drops.times[0] - cancelled_at < 0.1
        partial, _, meta = _cancelled_reply(store, "c")
        assert partial.startswith("one") and meta["stop_reason"] == "cancelled"


def test_anthropic_async_request_is_cut_when_cancelled() -> None:
    with FakeAnthropic(api_key=KEY) as fake:
        fake.enqueue(Reply(json={}, delay=30))
        model = AnthropicModel(api_key=KEY, base_url=fake.base_url, environ={}, max_retries=0)

        async def main() -> float:
            chat = Chat(model, store=MemoryStore(), session_id="c")
            task = asyncio.create_task(chat.asend("hello"))
            while not fake.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return time.monotonic()

        cancelled_at = asyncio.run(main())
        assert fake.drops.wait(5)
        assert fake.drops.times[0] - cancelled_at < 0.1


def test_openai_async_stream_is_cut_at_the_wire_when_closed() -> None:
    with FakeOpenAI() as fake:
        fake.replies.append(Turn(text="alpha beta gamma delta", pieces=["alpha ", "beta ",
                                 "gamma ", "delta"], piece_delay=0.3))
        model = OpenAIModel("gpt-4o", api_key="sk-test", base_url=fake.base_url, environ={},
                            max_retries=0)
        store = MemoryStore()

        async def main() -> float:
            chat = Chat(model, store=store, session_id="c")
            events = chat.astream("hello")
            async for event in events:
                if isinstance(event, str):
                    break
            await events.aclose()  # type: ignore[attr-defined]
            return time.monotonic()

        closed_at = asyncio.run(main())
        assert fake.drops.wait(5)
        assert fake.drops.times[0] - closed_at < 0.1
        partial, usage, meta = _cancelled_reply(store, "c")
        assert partial == "alpha " and meta["stop_reason"] == "cancelled"
        assert usage.output_tokens > 0


def test_openai_sync_stream_is_cut_at_the_wire_when_closed() -> None:
    with FakeOpenAI() as fake:
        fake.replies.append(Turn(text="alpha beta gamma", pieces=["alpha ", "beta ", "gamma"],
                                 piece_delay=0.3))
        model = OpenAIModel("gpt-4o", api_key="sk-test", base_url=fake.base_url, environ={},
                            max_retries=0)
        store = MemoryStore()
        events = Chat(model, store=store, session_id="c").stream("hello")
        assert next(events) == "alpha "
        events.close()
        closed_at = time.monotonic()
        assert fake.drops.wait(5)
        assert fake.drops.times[0] - closed_at < 0.1
        assert _cancelled_reply(store, "c")[2]["stop_reason"] == "cancelled"
