"""A real process that runs chat turns, for the concurrency and crash tests.

    python tests/turn_worker.py --db DB [--schema S] --session ID --mode MODE [options]

Modes:
    concurrent     send --count messages "<sender>-<j>" (each with idempotency key of the same
                   text; every --retry-every'th one is sent twice, as a client retrying after a
                   lost response); prints "SENT <text> <seq>" per turn, then "DONE"
    crash-model    the model prints READY, then hangs inside the call (kill it there)
    crash-stream   streams a slow reply; prints READY after the first delta
    crash-store    the model prints READY, waits for a line on stdin, then returns its reply, so
                   the test can hold the database's write lock first and kill the process while
                   it waits to store the reply
    crash-tool     the model asks for a tool; the tool prints READY and hangs
    paused         one turn of --text (--key): the model prints READY, waits for a line on
                   stdin, then answers "answer to <text>" (the test acts on the lock meanwhile)
    send           one turn of --text (with --key as idempotency key); prints "REPLY <seq>"

``paused`` and ``send`` print "FAILED <error class>" (exit 3) when the turn raises a colloquy
error, so the test reads which one.

Only the model (FunctionModel / EchoModel / ScriptedModel) is a double; the chat engine and the
store are colloquy's own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from colloquy import (  # noqa: E402
    Chat, ColloquyError, EchoModel, FunctionModel, ScriptedModel, tool, tool_call)
from colloquy.models import ModelRequest  # noqa: E402
from colloquy.store import Store, open_store  # noqa: E402


def open_db(db: str, schema: str | None) -> Store:
    if schema:
        from colloquy.store.postgres import PostgresStore

        return PostgresStore(db, schema=schema, max_size=4)
    return open_store(db)


def say(*parts: object) -> None:
    print(*parts, flush=True)


def hang(_: object = None) -> str:
    time.sleep(120)
    return "never"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--schema")
    ap.add_argument("--session", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--sender", default="w")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--start-at", type=float, default=0.0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--retry-every", type=int, default=0)
    ap.add_argument("--stream-every", type=int, default=0)
    ap.add_argument("--text", default="hello")
    ap.add_argument("--key")
    args = ap.parse_args()
    store = open_db(args.db, args.schema)

    if args.mode == "concurrent":
        chat = Chat(EchoModel(latency=args.latency), store=store, session_id=args.session,
                    user_id="u_shared")
        while time.time() < args.start_at:  # start together, after the imports
            time.sleep(0.001)
        for j in range(args.count):
            text = f"{args.sender}-{j}"
            attempts = 2 if args.retry_every and j % args.retry_every == 0 else 1
            for _ in range(attempts):
                if args.stream_every and j % args.stream_every == 0:
                    reply = [e for e in chat.stream(text, idempotency_key=text) if not isinstance(e, str)][0]
                else:
                    reply = chat.send(text, idempotency_key=text)
                say("SENT", text, reply.seq)
        say("DONE")
        return 0

    if args.mode == "crash-model":
        def in_model(req: ModelRequest) -> str:
            say("READY")
            return hang()

        Chat(FunctionModel(in_model), store=store, session_id=args.session).send(
            args.text, idempotency_key=args.key)
    elif args.mode == "crash-stream":
        chat = Chat(EchoModel(delay=0.3), store=store, session_id=args.session)
        for event in chat.stream(args.text, idempotency_key=args.key):
            if isinstance(event, str):
                say("READY")
    elif args.mode == "crash-store":
        def answer_after_go(req: ModelRequest) -> str:
            say("READY")
            sys.stdin.readline()
            return "a reply that is never stored"

        Chat(FunctionModel(answer_after_go), store=store, session_id=args.session).send(
            args.text, idempotency_key=args.key)
    elif args.mode == "crash-tool":
        @tool
        def slow_lookup(query: str) -> str:
            """Look something up (slowly)."""
            say("READY")
            return hang()

        model = ScriptedModel([tool_call("slow_lookup", {"query": "x"}), "done"])
        Chat(model, store=store, session_id=args.session, tools=[slow_lookup]).send(
            args.text, idempotency_key=args.key)
    elif args.mode in ("paused", "send"):
        def answer_after_go(req: ModelRequest) -> str:
            say("READY")
            sys.stdin.readline()
            return f"answer to {args.text}"

        model = FunctionModel(answer_after_go) if args.mode == "paused" else EchoModel()
        try:
            reply = Chat(model, store=store, session_id=args.session).send(
                args.text, idempotency_key=args.key)
        except ColloquyError as e:
            say("FAILED", type(e).__name__)
            store.close()
            return 3
        say("REPLY", reply.seq)
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
