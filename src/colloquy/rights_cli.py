"""CLI commands for data rights and continuity (wired into :mod:`colloquy.cli`):

    colloquy users export ID [-o FILE]          everything held about a user, as JSON
    colloquy users import FILE [--replace]      restore an export (colloquy.rights_import)
    colloquy users delete ID --yes              delete every row about a user, bytes erased
    colloquy purge --older-than 30d [--dry-run] retention: drop conversations idle that long
    colloquy sessions rename ID TITLE [--user U] edit a conversation's title
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import ColloquyError, ConfigError
from .files import write_private_text
from .rights import (
    DeleteReport,
    delete_user,
    erase_deleted,
    export_user,
    import_user,
    parse_age,
    purge_conversations,
)
from .messages import parse_json
from .rights_import import MAX_IMPORT_DEPTH
from .store import open_store
from .store.base import resolve_conversation
from .text import name_argument

AddDb = Callable[[argparse.ArgumentParser], None]


def _summary(report: DeleteReport) -> str:
    rows = ", ".join(f"{t} {n}" for t, n in report.rows.items() if n) or "nothing"
    erased = f"; erased with {', '.join(report.erasure)}" if report.erasure else ""
    return f"{report.conversations} conversations ({rows}){erased}"


def _holds_nothing(data: dict[str, Any]) -> bool:
    """True when an export holds no row at all: the user is unknown to this database."""
    tables = data.get("tables") or {}
    return not (data.get("sessions") or data.get("facts") or data.get("summaries")
                or any(t.get("rows") for t in tables.values()))


def _nobody(user_id: str) -> ColloquyError:
    return ColloquyError(f"no user {user_id!r} here: nothing is held about them in this database")


def cmd_users_export(args: argparse.Namespace) -> int:
    data = export_user(open_store(args.db, create=False), args.id)
    if _holds_nothing(data):  # a typo must not pass for an empty export
        raise _nobody(args.id)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if args.output and args.output != "-":
        write_private_text(args.output, text)  # owner-only: it holds everything about a user
        sys.stderr.write(f"exported {len(data['sessions'])} conversations of {args.id} "
                         f"to {args.output}\n")
    else:
        sys.stdout.write(text)
    return 0


def cmd_users_import(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                raw = f.read()
        # Bad UTF-8 becomes U+FFFD, as everywhere bytes enter (colloquy.text); the depth is
        # checked before the parser (which recurses) reads the file.
        data: dict[str, Any] = parse_json(raw.decode("utf-8", errors="replace"),
                                          MAX_IMPORT_DEPTH)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read export {args.file}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"cannot read export {args.file}: not a colloquy user export")
    report = import_user(open_store(args.db, create=True), data, replace=args.replace)
    rows = ", ".join(f"{t} {n}" for t, n in report.rows.items())
    skipped = (f"; not imported (accounts, tokens and tables import does not restore are never "
               f"taken from a file): {', '.join(report.skipped_tables)}"
               if report.skipped_tables else "")
    dropped = (f"; left out {len(report.dropped_facts)} facts with a blank statement: "
               f"{', '.join(report.dropped_facts)}" if report.dropped_facts else "")
    sys.stderr.write(f"imported {report.conversations} conversations of {report.user_id} "
                     f"({rows}){skipped}{dropped}\n")
    return 0


def cmd_users_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError(f"this deletes everything held about {args.id!r} for good; "
                          "add --yes to confirm")
    store = open_store(args.db, create=False)
    report = delete_user(store, args.id, erase=False)
    if not report.total:
        raise _nobody(args.id)
    if not args.keep_bytes:
        erase_deleted(store, [t for t, n in report.rows.items() if n], report)
    sys.stderr.write(f"deleted user {args.id}: {_summary(report)}\n")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    age = parse_age(args.older_than)
    store = open_store(args.db, create=False)
    cutoff = time.time() - age
    stale = [c for c in store.list_conversations(limit=10**9) if c.updated_at < cutoff]
    if not args.dry_run and not args.yes:
        raise ConfigError(f"this deletes the {len(stale)} conversations idle for more than "
                          f"{args.older_than} for good; add --yes to confirm (--dry-run lists them)")
    if args.dry_run:
        for c in stale:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at))
            sys.stdout.write(f"{c.id}\t{when}\tuser={c.user_id or '-'}\t{c.title or ''}\n")
        sys.stderr.write(f"{len(stale)} conversations idle for more than {args.older_than} "
                         "(dry run: nothing deleted)\n")
        return 0
    report = purge_conversations(store, age, erase=not args.keep_bytes)
    sys.stderr.write(f"purged {_summary(report)}\n")
    return 0


def cmd_sessions_rename(args: argparse.Namespace) -> int:
    title = " ".join(args.title.split())  # a blank one is refused by the store (the text rules)
    store = open_store(args.db, create=False)
    conv = store.update_conversation(resolve_conversation(store, args.id, args.user).id,
                                     title=title)
    sys.stderr.write(f"renamed {conv.name}: {conv.title}\n")
    return 0


def add_user_data_commands(usub: Any, add_db: AddDb) -> None:
    """``users export|import|delete`` under the existing ``users`` command group."""
    p = usub.add_parser("export", help="write everything held about a user as JSON")
    p.add_argument("id", metavar="ID", type=name_argument)
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default stdout)")
    add_db(p)
    p.set_defaults(func=cmd_users_export)

    p = usub.add_parser("import", help="restore a user from an export")
    p.add_argument("file", metavar="FILE", help="an export written by 'users export' (- for stdin)")
    p.add_argument("--replace", action="store_true",
                   help="delete what the database holds about the user first")
    add_db(p)
    p.set_defaults(func=cmd_users_import)

    p = usub.add_parser("delete", help="delete every row about a user, for good")
    p.add_argument("id", metavar="ID", type=name_argument)
    p.add_argument("--yes", action="store_true", help="confirm")
    p.add_argument("--keep-bytes", action="store_true",
                   help="skip the erasure (VACUUM etc.): faster, but deleted bytes may linger")
    add_db(p)
    p.set_defaults(func=cmd_users_delete)


def add_purge_command(sub: Any, add_db: AddDb) -> None:
    p = sub.add_parser("purge", help="retention: delete conversations idle for longer than an age")
    p.add_argument("--older-than", required=True, metavar="AGE",
                   help="30d, 12h, 2w, 90m, 45s (a unit is required)")
    p.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.add_argument("--keep-bytes", action="store_true", help="skip the erasure (VACUUM etc.)")
    add_db(p)
    p.set_defaults(func=cmd_purge)


def add_rename_command(ssub: Any, add_db: AddDb, add_ref: AddDb) -> None:
    p = ssub.add_parser("rename", help="set a session's title")
    add_ref(p)  # ID [--user U], as for sessions show|export|delete
    p.add_argument("title", metavar="TITLE")
    add_db(p)
    p.set_defaults(func=cmd_sessions_rename)
