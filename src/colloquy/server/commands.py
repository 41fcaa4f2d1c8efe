"""The ``colloquy serve`` and ``colloquy users`` commands (wired into :mod:`colloquy.cli`).

``serve`` passes its settings to the app through one environment variable and starts uvicorn
with an app *factory*, so one worker or N workers (separate processes over one database) build
the same app the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store import open_store
from ..store.users import UserStore, issue_token
from ..text import name_argument
from .steps import STEPS
from .sweep import SWEEP_INTERVAL

SETTINGS_VAR = "COLLOQUY_SERVER_SETTINGS"
METRICS_TOKEN_VAR = "COLLOQUY_METRICS_TOKEN"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Seconds a worker may take to answer uvicorn's supervisor (``--worker-healthcheck-timeout``):
#: its 5 s default killed healthy workers on a loaded 2-core machine (tests/test_serve_workers).
WORKER_HEALTHCHECK_TIMEOUT = 60.0


def _user_store(db: str | None, *, create: bool = False) -> UserStore:
    store = open_store(db, create=create)
    if not isinstance(store, UserStore):
        raise ConfigError(f"the {type(store).__name__} has no users table yet")
    return store


# -- users -----------------------------------------------------------------------------------------


def cmd_users_add(args: argparse.Namespace) -> int:
    token = issue_token(_user_store(args.db, create=True), args.name, replace=args.rotate)
    sys.stdout.write(token + "\n")
    sys.stderr.write(
        f"{'new token for' if args.rotate else 'added user'} {args.name}: the token above is shown "
        "only this once (only its hash is stored); send it as 'Authorization: Bearer <token>'\n")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    users = _user_store(args.db).list_users()
    if args.json:
        sys.stdout.write(json.dumps([u.model_dump() for u in users], indent=2) + "\n")
        return 0
    if not users:
        sys.stderr.write("no users (add one with: colloquy users add NAME)\n")
    for u in users:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(u.created_at))
        sys.stdout.write(f"{u.id}\t{when}\n")
    return 0


def cmd_users_revoke(args: argparse.Namespace) -> int:
    if not _user_store(args.db).remove_user(args.name):
        raise ConfigError(f"no user named {args.name!r}")
    sys.stderr.write(f"revoked the token of {args.name} (their conversations are kept)\n")
    return 0


def add_users_commands(
    users: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_db: Any,
) -> None:
    """Add ``add``, ``list`` and ``revoke`` to the ``colloquy users`` group."""
    p = users.add_parser("add", help="create a user of the HTTP service; prints their token once")
    p.add_argument("name", metavar="NAME", type=name_argument, help="the user id (conversations are filed under it)")
    p.add_argument("--rotate", action="store_true",
                   help="issue a new token for an existing user (the old one stops working)")
    add_db(p)
    p.set_defaults(func=cmd_users_add)
    p = users.add_parser("list", help="users of the HTTP service")
    p.add_argument("--json", action="store_true")
    add_db(p)
    p.set_defaults(func=cmd_users_list)
    p = users.add_parser("revoke", help="invalidate a user's token (keeps their data)")
    p.add_argument("name", metavar="NAME", type=name_argument)
    add_db(p)
    p.set_defaults(func=cmd_users_revoke)


# -- serve -----------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - checked here, used by _run
    except ImportError as e:
        raise ConfigError(
            "colloquy serve needs the server extra: pip install -e '.[server]'") from e
    from ..models import get_model
    from ..store import resolve_db_url
    from .ratelimit import RateLimit

    if args.port < 0 or args.port > 65535:
        raise ConfigError(f"--port must be 0-65535, not {args.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, not {args.threads}")
    if args.max_inflight is not None and args.max_inflight < 1:
        raise ConfigError(f"--max-inflight must be at least 1, not {args.max_inflight}")
    if args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must not be negative, not {args.drain_timeout}")
    if not args.worker_healthcheck_timeout > 0:  # NaN too
        raise ConfigError("--worker-healthcheck-timeout must be positive, not "
                          f"{args.worker_healthcheck_timeout}")
    if not args.sweep_interval >= 0:  # NaN too
        raise ConfigError(f"--sweep-interval must not be negative, not {args.sweep_interval}")
    RateLimit.parse(args.rate_limit)  # a clear error now, not in every worker
    get_model(args.model)  # fails here, in one line, on a missing API key or unknown model
    for name in args.allow_model or ():
        get_model(name)
    db = resolve_db_url(args.db)
    open_store(db).close()  # create and migrate once, before the workers race to it
    settings = {
        "db": db, "model": args.model, "system": args.system or "",
        "rate_limit": args.rate_limit, "allowed_models": args.allow_model or [],
        "max_message_chars": args.max_message_chars, "max_body_bytes": args.max_body_bytes,
        "threads": args.threads, "max_inflight": args.max_inflight, "thinking": args.thinking,
        "sweep_interval": args.sweep_interval, "steps": args.steps,
        "window": args.window, "max_input_tokens": args.max_input_tokens, "full": args.full,
        "policy": args.policy, "policy_config": args.policy_config,
        "extract_facts": args.extract_facts, "memory_model": args.memory_model,
        "guard": args.guard or [], "guards_file": args.guards, "guard_model": args.guard_model,
    }
    _policy_and_extraction(settings)  # a bad policy fails here, once, in one line
    _guards(settings)  # and so does a bad guard spec or file
    from .otel import exporters_wanted

    exporters_wanted()  # a bad OTEL_* setting too
    mode, host, port = parse_metrics(args.metrics)
    settings["metrics"] = mode
    if mode == "token" and not os.environ.get(METRICS_TOKEN_VAR):
        raise ConfigError(f"--metrics token needs the token in {METRICS_TOKEN_VAR}")
    with contextlib.ExitStack() as cleanup:
        if mode != "off":
            _metrics_directory(args.metrics_dir, cleanup)  # before any worker starts
        if mode == "port":
            from prometheus_client import start_http_server

            from .metrics import service_registry

            server, thread = start_http_server(port, addr=host, registry=service_registry())
            cleanup.callback(server.shutdown)
            sys.stderr.write(f"colloquy: metrics on http://{host}:{server.server_port}/metrics\n")
        _run(args, settings)
    return 0


def _run(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    import uvicorn

    os.environ[SETTINGS_VAR] = json.dumps(settings)
    if args.host not in LOOPBACK:
        sys.stderr.write(f"colloquy: serving on {args.host}: bearer tokens travel in the clear "
                         "unless a TLS proxy sits in front\n")
    sys.stderr.write(f"colloquy: serving http://{args.host}:{args.port}/ "
                     f"(model {args.model or 'default'}, {args.workers} worker(s))\n")
    from .protocol import PROTOCOL

    uvicorn.run("colloquy.server.commands:app_from_env", factory=True, host=args.host,
                port=args.port, workers=args.workers, log_level=args.log_level,
                proxy_headers=False, server_header=False,
                http=PROTOCOL,  # a request too long to parse is refused in JSON, not plain text
                # SIGTERM: stop accepting, let turns in flight finish up to the deadline, then
                # cancel them (each stores its partial reply: colloquy.effects).
                timeout_graceful_shutdown=args.drain_timeout,
                # With --workers > 1 the supervisor pings each worker and kills one that does
                # not answer in time; uvicorn's 5 s killed healthy workers while they imported
                # the app or loaded the embedding model on a loaded machine (load 10, 2 cores:
                # "Child process died", every start, every turn in flight lost).
                timeout_worker_healthcheck=args.worker_healthcheck_timeout)


def parse_metrics(value: str) -> tuple[str, str, int]:
    """``--metrics``: ``off``, ``token`` (``GET /metrics`` on the service's port, to
    ``Authorization: Bearer $COLLOQUY_METRICS_TOKEN``), or ``[HOST:]PORT`` (open, on a port of
    its own, loopback unless a host is given). Returns (mode, host, port)."""
    value = value.strip().lower()
    if value in ("off", "token"):
        return value, "", 0
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics {value!r}: use off, token, PORT or HOST:PORT")
    return "port", host.strip("[]") or "127.0.0.1", int(port)


def _metrics_directory(path: str | None, cleanup: contextlib.ExitStack) -> None:
    """The workers' shared directory for prometheus-client's multiprocess mode, set in
    ``PROMETHEUS_MULTIPROC_DIR`` before they start. Default: a new private directory, removed
    when ``serve`` exits. A given one (``--metrics-dir``, or the variable already set) is
    locked for this ``serve`` (a second one on it would mix two services' figures: it is
    refused) and emptied of an earlier run's files."""
    from filelock import FileLock, Timeout

    from .metrics import MULTIPROC_VAR, clean_directory

    given = path or os.environ.get(MULTIPROC_VAR)
    if not given:
        directory = Path(tempfile.mkdtemp(prefix="colloquy-metrics-"))
        cleanup.callback(shutil.rmtree, directory, True)
    else:
        directory = Path(given).resolve()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = FileLock(f"{directory}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"metrics directory {directory} is in use by another colloquy "
                              "serve; give each service its own --metrics-dir") from None
        cleanup.callback(lock.release)
        clean_directory(directory)
    os.environ[MULTIPROC_VAR] = str(directory)


def app_from_env() -> Any:
    """The app factory uvicorn calls in each worker (settings come from ``serve``)."""
    from .app import create_app
    from .ratelimit import RateLimit

    raw = json.loads(os.environ.get(SETTINGS_VAR, "{}"))
    policy, extraction = _policy_and_extraction(raw)
    guards, persona = _guards(raw)
    options: dict[str, Any] = {
        "system": raw.get("system") or persona.get("system") or "",
        "guards": guards,
        "allowed_models": raw.get("allowed_models", []),
        "rate_limit": RateLimit.parse(raw.get("rate_limit", "120/minute")),
        "policy": policy,
        "extract_facts": extraction,
    }
    for key in ("max_message_chars", "max_body_bytes", "threads", "max_inflight", "thinking"):
        if raw.get(key):
            options[key] = int(raw[key])
    if raw.get("steps"):
        options["steps"] = raw["steps"]
    if raw.get("sweep_interval") is not None:
        options["sweep_interval"] = float(raw["sweep_interval"])
    mode = raw.get("metrics", "off")
    options["metrics"] = mode != "off"
    if mode == "token":
        options["metrics_token"] = os.environ[METRICS_TOKEN_VAR]
    app = create_app(db=raw.get("db"), model=raw.get("model"), **options)
    from .otel import setup_tracing

    setup_tracing(app)  # when the OTEL_* variables ask for export
    return app


def _guards(raw: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Guards and the guard file's persona from serve's flags, as ``colloquy chat`` builds them:
    every conversation of the service gets the same input and output guards."""
    from ..guards import build_guards

    return build_guards(raw.get("guard") or [], raw.get("guards_file"), judge=raw.get("guard_model"))


def _policy_and_extraction(raw: dict[str, Any]) -> tuple[Any, Any]:
    """The context policy and fact extraction from serve's flags, as ``colloquy chat`` builds
    them (``--policy memory`` gives facts, summaries and recall)."""
    from ..cli import policy_from_args
    from ..memory.cli import extraction_from_args

    args = argparse.Namespace(**{k: raw.get(k) for k in (
        "window", "max_input_tokens", "full", "policy", "policy_config", "extract_facts",
        "memory_model", "model", "db")})
    args.full = bool(args.full)
    return policy_from_args(args), extraction_from_args(args)


def add_serve_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_db: Any,
    add_policy: Any,
    add_guards: Any,
) -> None:
    from ..cli import thinking_budget

    p = sub.add_parser("serve", help="run the HTTP API and the web chat page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--model", metavar="M", help="the default model (as for colloquy chat)")
    p.add_argument("--allow-model", action="append", metavar="M",
                   help="another model conversations may choose (repeatable)")
    p.add_argument("--system", metavar="TEXT", help="persona of conversations created without one")
    p.add_argument("--thinking", type=thinking_budget, metavar="N",
                   help="extended thinking for every turn, with a budget of N tokens (a request "
                   "may ask for its own, or 0 for none)")
    add_policy(p)  # also --policy NAME, --policy-config FILE, --extract-facts, --memory-model
    add_guards(p)  # --guard SPEC, --guards FILE, --guard-model M: as for colloquy chat
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes over the same database (default 1)")
    p.add_argument("--threads", type=int, default=16, metavar="N",
                   help="threads per worker for the turns' short steps (store, policy); a turn "
                   "waiting on the model holds none (default 16)")
    p.add_argument("--steps", choices=STEPS, default="auto",
                   help="where a turn's short steps run: auto (on the event loop with a SQLite "
                   "or memory store, on the threads from where a turn may wait on a model: "
                   "guards, facts, titles, summaries, embeddings) or threads (default auto)")
    p.add_argument("--max-inflight", type=int, default=None, metavar="N",
                   help="turns a worker holds in flight; past it, 503 with Retry-After at once "
                   "(default sized by memory: see the README, Service)")
    p.add_argument("--sweep-interval", type=float, default=SWEEP_INTERVAL, metavar="S",
                   help="seconds between sweeps that drop from a worker's memory the "
                   "conversations deleted by another process (users delete, purge, another "
                   f"worker); 0: never (default {SWEEP_INTERVAL:g})")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds to let turns in flight finish before cutting them "
                   "(their partial replies are stored; default 30)")
    p.add_argument("--worker-healthcheck-timeout", type=float,
                   default=WORKER_HEALTHCHECK_TIMEOUT, metavar="S",
                   help="with --workers > 1, seconds a worker may take to answer the "
                   "supervisor's health check before it is killed and restarted (default "
                   f"{WORKER_HEALTHCHECK_TIMEOUT:g}; uvicorn's own is 5)")
    p.add_argument("--rate-limit", default="120/minute", metavar="N/PERIOD",
                   help="per-user request rate, one limit for every process and machine on "
                   "the database, e.g. 60/minute, 5/s, off (default 120/minute)")
    p.add_argument("--max-message-chars", type=int, default=32_000, metavar="N")
    p.add_argument("--max-body-bytes", type=int, default=256 * 1024, metavar="N")
    p.add_argument("--metrics", default="off", metavar="MODE",
                   help="Prometheus /metrics: off (default), token (on the service's port, to "
                   f"'Authorization: Bearer ${METRICS_TOKEN_VAR}'), or [HOST:]PORT (open, on a "
                   "port of its own; loopback unless HOST is given)")
    p.add_argument("--metrics-dir", metavar="DIR",
                   help="the workers' shared metrics directory (default: a new private one)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    add_db(p)
    p.set_defaults(func=cmd_serve)
