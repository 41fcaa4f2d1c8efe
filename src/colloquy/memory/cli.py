"""The CLI's memory commands and policy flags (wired into colloquy.cli with one line each).

    colloquy chat --policy memory [--policy-config FILE] [--extract-facts every|N|off]
                  [--memory-model M] ...
    colloquy memory list   --user ID [--all] [--json] [--db PATH]
    colloquy memory add    --user ID [--subject S] TEXT [--db PATH]
    colloquy memory forget --user ID (FACT_ID ... | --all) [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ..context.base import ContextPolicy
from ..context.presets import POLICY_NAMES, load_policy_config, make_extraction, make_policy
from ..errors import ConfigError, StoreError
from ..store import open_store
from ..store.base import conversation_names
from ..text import name_argument
from .extract import FactExtraction
from .records import Fact


def add_policy_flags(p: argparse.ArgumentParser) -> None:
    """``--policy``, ``--policy-config``, ``--extract-facts``, ``--memory-model``."""
    p.add_argument("--policy", choices=POLICY_NAMES, metavar="NAME",
                   help=f"context policy: {', '.join(POLICY_NAMES)} (with --max-input-tokens as "
                        "its budget and --window as its cap on recent turns)")
    p.add_argument("--retriever", choices=("auto", "bm25", "hybrid"),
                   help="how recall finds older turns: auto (default: hybrid once the "
                        "embeddings extra is loaded, in the background; else bm25), bm25 "
                        "(never loads a model), hybrid (needs colloquy[embeddings])")
    p.add_argument("--policy-config", metavar="FILE",
                   help="a TOML or JSON file naming and tuning the policy (see the README, Memory)")
    p.add_argument("--extract-facts", metavar="every|N|off",
                   help="extract facts about --user after every turn, every N turns, or never "
                        "(default: every turn with the facts and memory policies)")
    p.add_argument("--memory-model", metavar="M",
                   help="model that writes summaries and extracts facts (default "
                        "claude-haiku-4-5; offline-summariser/offline-facts for offline chats)")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    path = getattr(args, "policy_config", None)
    return load_policy_config(path) if path else {}


def _chat_model_name(args: argparse.Namespace) -> str | None:
    """The chat's model name: the flag, else the stored session's (so defaults fit it)."""
    if getattr(args, "model", None):
        return str(args.model)
    session = getattr(args, "session", None) or getattr(args, "id", None)
    if session:
        try:
            conv = open_store(getattr(args, "db", None), create=False).find_conversation(session)
        except StoreError:  # no database yet (the command itself reports a broken one)
            return None
        if conv is not None and conv.model:
            return conv.model
    return None


#: The size flags each named policy uses (the composed ones, summary to memory, take both:
#: --max-input-tokens as the budget, --window as the cap on recent turns).
_BOTH = ("max_input_tokens", "window")
_TAKES: dict[str, tuple[str, ...]] = {"window": ("window",), "budget": ("max_input_tokens",),
                                      "full": ()}


def wants_named_policy(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "policy", None) or getattr(args, "policy_config", None))


def policy_from_cli_args(args: argparse.Namespace) -> ContextPolicy:
    if getattr(args, "full", False):
        raise ConfigError("--full cannot be combined with --policy/--policy-config: "
                          "use --policy full")
    config = _config(args)
    name = getattr(args, "policy", None) or config.get("policy") or "window"
    unused = [flag for flag, attr in (("--window", "window"), ("--max-input-tokens", "max_input_tokens"))
              if getattr(args, attr, None) is not None and attr not in _TAKES.get(name, _BOTH)]
    if unused:  # a flag the policy would silently ignore
        takes = " and ".join(f"--{a.replace('_', '-')}" for a in _TAKES.get(name, _BOTH)) or "neither"
        raise ConfigError(f"--policy {name} takes {takes}, not {', '.join(unused)}")
    retriever = getattr(args, "retriever", None)
    if retriever is not None:
        if name not in ("default", "recall", "memory"):
            raise ConfigError(f"--policy {name} recalls nothing: --retriever is for the default, "
                              "recall and memory policies")
        config.setdefault("recall", {})["retriever"] = retriever
    memory_model = getattr(args, "memory_model", None)
    if memory_model:
        config.setdefault("summary", {}).setdefault("model", memory_model)
    return make_policy(getattr(args, "policy", None), config=config,
                       max_input_tokens=getattr(args, "max_input_tokens", None),
                       window=getattr(args, "window", None), chat_model=_chat_model_name(args))


def _every(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in {"off", "never", "no", "0"}:
        return 0
    if v in {"every", "each", "on", "1"}:
        return 1
    if v.isdigit():
        return int(v)
    raise ConfigError(f"--extract-facts takes every, off or a number of turns, not {value!r}")


def extraction_from_args(args: argparse.Namespace) -> FactExtraction | None:
    every = _every(getattr(args, "extract_facts", None))
    if every is None and not wants_named_policy(args):
        return None
    extraction = make_extraction(getattr(args, "policy", None), every=every, config=_config(args),
                                 model=getattr(args, "memory_model", None),
                                 chat_model=_chat_model_name(args))
    if extraction is not None and not getattr(args, "user", None):
        sys.stderr.write("colloquy: note: facts are kept per user; pass --user ID to extract "
                         "and use them\n")
    return extraction


# -- colloquy memory ---------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _fact_row(f: Fact, names: dict[str, str]) -> str:
    """One tab-separated line; the source by the name the user knows (``sessions show --user
    U NAME`` opens it), or "a deleted conversation"."""
    src = f.source_conversation
    origin = ((f"from {names[src]}#{f.source_seq}" if src in names
               else "from a deleted conversation") if src
              else "added by hand" if f.origin == "user" else "extracted")
    state = "" if f.active else f"\tretired {_when(f.valid_until)}" + (
        f" -> {f.superseded_by}" if f.superseded_by else "")
    return f"{f.id}\t{f.subject}\t{f.statement}\tsince {_when(f.valid_from)}\t{origin}{state}"


def cmd_memory_list(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    facts = store.list_facts(args.user, include_retired=args.all)
    if args.json:
        sys.stdout.write(json.dumps([f.model_dump(mode="json") for f in facts], indent=2,
                                    ensure_ascii=False) + "\n")
        return 0
    if not facts:
        sys.stderr.write(f"no facts for user {args.user!r}\n")
    names = conversation_names(store, args.user, (f.source_conversation for f in facts))
    for f in facts:
        sys.stdout.write(_fact_row(f, names) + "\n")
    return 0


def cmd_memory_add(args: argparse.Namespace) -> int:
    # A blank statement is refused by the store (the text rules), as on every route.
    new = Fact(user_id=args.user, subject=args.subject or "", statement=" ".join(args.text).strip(),
               origin="user")
    stored = open_store(args.db, create=True).add_fact(new)
    if stored.id != new.id:
        sys.stderr.write(f"already known as {stored.id}\n")
    sys.stdout.write(stored.id + "\n")
    return 0


def cmd_memory_forget(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise ConfigError("memory forget needs fact ids or --all (not both)")
    store = open_store(args.db, create=False)
    if args.ids:  # one outcome: an unknown id refuses the whole command, nothing forgotten
        known = {f.id for f in store.list_facts(args.user, include_retired=True)}
        missing = [i for i in dict.fromkeys(args.ids) if i not in known]
        if missing:
            raise ConfigError(f"no such fact for user {args.user!r}: {', '.join(missing)}; "
                              "nothing was forgotten")
    n = store.forget_facts(args.user, None if args.all else list(dict.fromkeys(args.ids)))
    sys.stderr.write(f"forgot {n} fact{'s' if n != 1 else ''} of user {args.user!r}\n")
    return 0


def add_memory_commands(
    sub: Any, add_db: Callable[[argparse.ArgumentParser], None]
) -> None:
    """``colloquy memory list|add|forget``."""
    memory = sub.add_parser("memory", help="list, add and forget facts remembered about a user")
    msub = memory.add_subparsers(dest="memory_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="the user's facts (active ones unless --all)")
    p.add_argument("--user", metavar="ID", type=name_argument, required=True)
    p.add_argument("--all", action="store_true", help="include retired facts")
    p.add_argument("--json", action="store_true")
    add_db(p)
    p.set_defaults(func=cmd_memory_list)
    p = msub.add_parser("add", help="remember a fact about the user")
    p.add_argument("--user", metavar="ID", type=name_argument, required=True)
    p.add_argument("--subject", metavar="S", help="what it is about (default: general)")
    p.add_argument("text", nargs="+", metavar="TEXT")
    add_db(p)
    p.set_defaults(func=cmd_memory_add)
    p = msub.add_parser("forget", help="delete facts for good")
    p.add_argument("--user", metavar="ID", type=name_argument, required=True)
    p.add_argument("ids", nargs="*", metavar="FACT_ID")
    p.add_argument("--all", action="store_true", help="forget every fact of the user")
    add_db(p)
    p.set_defaults(func=cmd_memory_forget)
