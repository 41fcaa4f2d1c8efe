"""The ``colloquy`` command: a thin layer over the library.

It parses flags, opens a store, builds a :class:`Chat` and prints; it never assembles prompts or
touches SQL. Every :class:`ColloquyError` is turned into one line on stderr (no traceback) by
:func:`main`, the one place errors are translated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .chat import Chat, Reply
from .context.base import ContextPolicy
from .context.policies import FullHistory, RollingWindow, TokenBudget
from .context.thinking import check_budget
from .errors import ColloquyError, ConfigError, ContextTooLongError, InvalidTextError, ModelError
from .files import private_dir, private_open
from .guards import build_guards
from .messages import (
    DocumentBlock,
    ServerToolUseBlock,
    StoredMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from .models import ThinkingDelta
from .store import Store, default_db_path, open_store
from .store.base import Conversation, new_id, resolve_conversation, users_conversation
from .text import clean, is_blank, name_argument, require_name
from .memory.cli import (add_memory_commands, add_policy_flags, extraction_from_args,
                         policy_from_cli_args, wants_named_policy)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# -- shared helpers ------------------------------------------------------------------------------


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="database: a SQLite file path, 'memory', or "
                   "postgresql://... (default: $COLLOQUY_DB, else a file in the user data dir)")


def _add_session_ref(p: argparse.ArgumentParser) -> None:
    """A session argument: its id, or with ``--user`` the name that user knows it by, resolved
    as ``chat --user U --session NAME`` resolves it (store.base.resolve_conversation)."""
    p.add_argument("id", metavar="ID", type=name_argument,
                   help="the session's id; with --user, the user's name for "
                   "it (as the service and 'sessions list' show it)")
    p.add_argument("--user", metavar="ID", type=name_argument, help="resolve ID among this user's sessions")


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=int, metavar="N",
                   help="keep the last N turns (with no policy flag at all: the default policy, "
                   "recent turns + recalled older ones); with --policy, its cap on recent turns")
    p.add_argument("--max-input-tokens", type=int, metavar="N",
                   help="keep the newest turns that fit under N input tokens; with --policy, "
                   "its budget")
    p.add_argument("--full", action="store_true", help="send the whole history, untrimmed")
    add_policy_flags(p)


def policy_from_args(args: argparse.Namespace) -> ContextPolicy | None:
    """The context policy the flags ask for (None: the default). Every combination the help
    offers works; the others are refused with a ConfigError saying why."""
    if wants_named_policy(args):  # --policy NAME / --policy-config FILE (colloquy.memory.cli)
        return policy_from_cli_args(args)
    window = getattr(args, "window", None)
    budget = getattr(args, "max_input_tokens", None)
    retriever = getattr(args, "retriever", None)
    if retriever is not None:
        if window is not None or budget is not None or getattr(args, "full", False):
            raise ConfigError("--retriever is for the default policy's recall: it takes none of "
                              "--window, --max-input-tokens, --full (or name a --policy)")
        from .context.default import DefaultPolicy

        return DefaultPolicy(retriever=retriever)
    if getattr(args, "full", False):
        if window is not None or budget is not None:
            raise ConfigError("--full sends everything: it takes neither --window nor "
                              "--max-input-tokens")
        return FullHistory()
    if window is not None and budget is not None:
        raise ConfigError("--window and --max-input-tokens together need a --policy that uses "
                          "both (summary, facts, recall or memory)")
    if window is not None:
        return RollingWindow(turns=window)
    if budget is not None:
        return TokenBudget(max_input_tokens=budget)
    return None


def thinking_budget(value: str) -> int:
    """``--thinking N``: a token budget the API accepts (colloquy.context.thinking)."""
    try:
        return check_budget(int(value)) or 0
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if "budget" in str(e) else
                                         f"not a number of tokens: {value!r}") from e


def _block_text(b: Any) -> str:
    if isinstance(b, TextBlock):
        return b.text
    if isinstance(b, ToolUseBlock):
        return f"[tool_use {b.name} {json.dumps(b.input)}]"
    if isinstance(b, ToolResultBlock):
        head = b.text if len(b.text) <= 200 else b.text[:200] + "…"
        return f"[tool_result{' error' if b.is_error else ''} {head}]"
    if isinstance(b, ThinkingBlock):
        head = b.thinking if len(b.thinking) <= 200 else b.thinking[:200] + "…"
        return f"[thinking {head}]"
    if isinstance(b, DocumentBlock):
        return f"[document {b.title or b.source.get('type', '')}]"
    if isinstance(b, ServerToolUseBlock):
        return f"[server_tool_use {b.name} {json.dumps(b.input)}]"
    return f"[{b.type}]"


def _render(sm: StoredMessage) -> str:
    text = " ".join(_block_text(b) for b in sm.message.content)
    return f"[{sm.seq}] {sm.role}: {text}"


def _money(x: float | None, estimated: bool = False) -> str:
    """``$0.000120``, ``~$0.000120`` for a cost of estimated usage, or ``price unknown`` (no
    price, or a call that reported no usage: never shown as $0)."""
    return "price unknown" if x is None else f"{'~' if estimated else ''}${x:.6f}"


def _dump(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _conversation_json(store: Store, conversation_id: str) -> dict[str, Any]:
    conv = store.get_conversation(conversation_id)
    return {
        "conversation": conv.model_dump(mode="json"),
        "messages": [
            sm.model_dump(mode="json", exclude={"conversation_id"}, exclude_none=True)
            for sm in store.load(conversation_id)
        ],
    }


# -- chat --------------------------------------------------------------------------------------


HELP = """commands:
  /history   print the stored conversation
  /cost      tokens and cost per model call and for the session
  /context   print what the policy would send from the stored log (the request as JSON)
  /help      this list
  /quit      leave (Ctrl-D works too)
  //text     send a message that starts with "/" (the first one is dropped)"""


def _print_cost(chat: Chat, out: TextIO) -> None:
    cost = chat.cost()
    for t in cost.turns:
        u = t.usage
        out.write(f"[{t.seq}] {t.model}: {u.describe()} · "
                  f"cache write {u.cache_write_tokens} · cache read {u.cache_read_tokens} · "
                  f"{_money(t.cost_usd, u.estimated)}\n")
    for s in cost.side_calls:  # summaries, fact extraction, titles
        u = s.usage
        out.write(f"[{s.purpose}] {s.model}: {s.calls} call{'s' if s.calls != 1 else ''} · "
                  f"{u.describe()} · {_money(s.cost_usd, u.estimated)}\n")
    u = cost.usage
    calls = len(cost.turns) + sum(s.calls for s in cost.side_calls)
    out.write(f"session: {calls} calls · {u.describe()} · "
              f"cache write {u.cache_write_tokens} · cache read {u.cache_read_tokens} · "
              f"{_money(cost.cost_usd, u.estimated)}\n")


def _slash(chat: Chat, line: str, out: TextIO) -> bool:
    """Run a slash command; False means quit."""
    cmd = line.split()[0].lower()
    if cmd in {"/quit", "/exit", "/q"}:
        return False
    if cmd == "/history":
        for sm in chat.history():
            out.write(_render(sm) + "\n")
    elif cmd == "/cost":
        _print_cost(chat, out)
    elif cmd == "/context":
        if chat.history():
            _dump(chat.next_request().to_anthropic(), out)
        else:
            out.write("(empty conversation: the next request will hold only your message)\n")
    elif cmd in {"/help", "/?"}:
        out.write(HELP + "\n")
    else:
        sys.stderr.write(f"unknown command {cmd} (nothing was sent); /help lists the commands\n")
    return True


#: Terminal escape sequences (arrow keys...) typed where no line editing is available.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|.)")
HISTORY_LINES = 1000


def history_path() -> Path | None:
    """The prompt's history file: ``$COLLOQUY_HISTORY``, or ``history`` beside the default
    database in the user data directory; None when ``COLLOQUY_HISTORY=off``."""
    value = os.environ.get("COLLOQUY_HISTORY")
    if value is not None and value.strip().lower() in {"off", "none", ""}:
        return None
    return Path(value) if value else default_db_path().with_name("history")


def _line_editing() -> Callable[[], None]:
    """Line editing and history for the interactive prompt, from the standard library's
    ``readline``: arrow keys move the cursor and recall earlier lines instead of reaching the
    model as escape sequences. The history file is created 0600 (it holds what was typed) and
    keeps the last HISTORY_LINES lines. Returns the function that saves it."""
    try:
        import readline
    except ImportError:  # no readline on this platform: escape sequences are stripped instead
        return lambda: None
    path = history_path()
    if path is None:
        return lambda: None
    try:
        private_dir(path.parent)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        readline.read_history_file(path)
    except OSError:
        return lambda: None
    readline.set_history_length(HISTORY_LINES)

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass
    return save


def _lines(interactive: bool) -> Iterator[str]:
    if interactive:
        save = _line_editing()
        try:
            while True:
                try:
                    line = input("you> ")
                except EOFError:
                    return
                yield _ESCAPES.sub("", line)
                save()
        finally:
            save()
    else:
        # Bytes that are not valid in the locale's encoding become U+FFFD (colloquy.text): a bad
        # line never stops the chat, nor loses the lines before it.
        for line in sys.stdin:
            yield line.rstrip("\n")


def _lenient_stdin() -> None:
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if callable(reconfigure):
        reconfigure(errors="replace")


def _add_guards(p: argparse.ArgumentParser) -> None:
    """The guard flags, shared by ``chat`` and ``serve`` (built by :func:`build_guards`)."""
    p.add_argument("--guard", action="append", metavar="SPEC",
                   help="add a guard: topic:\"cooking,recipes\", pii[:email,phone,card], "
                   "length[:N], hook:module:function (repeatable; see the README's Guards)")
    p.add_argument("--guards", metavar="FILE", help="guards and persona from a TOML/JSON file")
    p.add_argument("--guard-model", metavar="M",
                   help="model that judges the topic guard (default: embeddings when "
                   "colloquy[embeddings] is installed, else keyword match)")


def cmd_chat(args: argparse.Namespace) -> int:
    _lenient_stdin()
    store = open_store(args.db, create=True)
    session = args.session
    if session and args.user:  # a name in the user's own namespace, as the service has it
        existing = users_conversation(store, args.user, session)
        if existing is not None:
            session = existing.id
        elif store.find_conversation(session) is not None:  # another user's id: a new one
            session = store.create_conversation(id=new_id(), name=session, user_id=args.user).id
    else:
        existing = store.find_conversation(session) if session else None
    if args.session and existing is None:
        require_name(args.session, "the session name")  # refused now, not at the first turn
    guards, persona = build_guards(args.guard or [], args.guards, judge=args.guard_model)
    chat = Chat(
        args.model, system=args.system if args.system is not None else persona.get("system"),
        store=store, session_id=session, user_id=args.user,
        policy=policy_from_args(args), temperature=args.temperature, max_tokens=args.max_tokens,
        extract_facts=extraction_from_args(args),
        guards=guards, thinking=args.thinking,
    )
    err = sys.stderr
    dim, undim = ("\x1b[2m", "\x1b[0m") if err.isatty() else ("", "")
    if existing:
        err.write(f"resuming session {existing.name} ({existing.last_seq} messages, "
                  f"model {chat.model.name})\n")
    else:
        err.write(f"session {args.session or chat.session_id} (model {chat.model.name}); "
                  "/help for commands\n")
    interactive = sys.stdin.isatty()
    failures = refused = 0
    for line in _lines(interactive):
        if is_blank(line):  # spaces, U+200B, a BOM: nothing to send, like an empty line
            continue
        if line.startswith("//"):
            line = line[1:]
        elif line.startswith("/"):
            if not _slash(chat, line, sys.stdout):
                break
            continue
        try:
            reply: Reply | None = None
            if args.no_stream:
                reply = chat.send(line)
                sys.stdout.write(reply.text)
            else:
                thinking = False
                for event in chat.stream(line):
                    if isinstance(event, ThinkingDelta):  # apart from the answer, dimmed
                        if not event.thinking:
                            continue  # the block's signature: nothing to show
                        err.write(f"{dim}{event.thinking}{undim}")
                        err.flush()
                        thinking = True
                    elif isinstance(event, str):
                        if thinking:
                            err.write("\n")
                            thinking = False
                        sys.stdout.write(event)
                        sys.stdout.flush()
                    else:
                        reply = event
            sys.stdout.write("\n")
            sys.stdout.flush()
        except InvalidTextError as e:  # this line is refused; the chat goes on with the next
            refused += 1
            err.write(f"colloquy: {e}: line not sent\n")
            continue
        except ModelError as e:
            failures += 1
            err.write(f"\ncolloquy: model error: {e}\n(your message is saved; send again to retry)\n")
            # Piped: a provider that will refuse every line ends the chat; a line too long
            # for the context window is that line's problem, and the next lines still go.
            if not interactive and not e.retryable and not isinstance(e, ContextTooLongError):
                return EXIT_ERROR
            continue
        if reply is not None:
            u = reply.usage
            for note in reply.notes:
                err.write(f"  note: {note}\n")
            err.write(f"  [{u.describe()} · cache r/w "
                      f"{u.cache_read_tokens}/{u.cache_write_tokens} · {_money(reply.cost_usd, u.estimated)}]\n")
    return EXIT_ERROR if failures else EXIT_USAGE if refused else EXIT_OK


# -- sessions ----------------------------------------------------------------------------------


def cmd_sessions_list(args: argparse.Namespace) -> int:
    convs = open_store(args.db, create=False).list_conversations(user_id=args.user, limit=args.limit)
    if args.json:
        _dump([c.model_dump(mode="json") for c in convs], sys.stdout)
        return EXIT_OK
    if not convs:
        sys.stderr.write("no sessions\n")
    for c in convs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at))
        # The name, as the service shows it; the id too where they differ.
        sys.stdout.write(f"{_ref(c)}\t{when}\t{c.last_seq} msgs\t{c.model}\t"
                         f"user={c.user_id or '-'}\t{c.title or ''}\n")
    return EXIT_OK


def _ref(conv: Conversation) -> str:
    """A conversation as the CLI shows it: its name, and its id where they differ."""
    return conv.name if conv.name == conv.id else f"{conv.name} (id {conv.id})"


def cmd_sessions_show(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    conv = resolve_conversation(store, args.id, args.user)
    if args.json:
        _dump(_conversation_json(store, conv.id), sys.stdout)
        return EXIT_OK
    sys.stdout.write(f"session {_ref(conv)} · model {conv.model} · "
                     f"user {conv.user_id or '-'}\n")
    if conv.persona:
        sys.stdout.write(f"system: {conv.persona}\n")
    for sm in store.load(conv.id):
        sys.stdout.write(_render(sm) + "\n")
    return EXIT_OK


def cmd_sessions_export(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    data = _conversation_json(store, resolve_conversation(store, args.id, args.user).id)
    if args.output and args.output != "-":
        with private_open(args.output) as f:  # owner-only, like the database
            _dump(data, f)
        sys.stderr.write(f"exported {len(data['messages'])} messages to {args.output}\n")
    else:
        _dump(data, sys.stdout)
    return EXIT_OK


def cmd_sessions_delete(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    conv = resolve_conversation(store, args.id, args.user)
    store.delete_conversation(conv.id)
    sys.stderr.write(f"deleted session {_ref(conv)}\n")
    return EXIT_OK


def cmd_context(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    conv = resolve_conversation(store, args.id, args.user)  # a clear error for an unknown one
    chat = Chat(args.model, store=store, session_id=conv.id, user_id=conv.user_id,
                policy=policy_from_args(args), max_tokens=args.max_tokens)
    request = chat.next_request(args.message)
    if args.json:
        _dump(request.to_anthropic(), sys.stdout)
        return EXIT_OK
    tokens = chat.count_tokens(request, exact=args.exact)
    sys.stdout.write(f"model {request.model} · max_tokens {request.max_tokens} · "
                     f"{'' if args.exact else '~'}{tokens} input tokens\n")
    for block in request.system:
        sys.stdout.write(f"system: {block.text}\n")
    for i, m in enumerate(request.messages):
        sys.stdout.write(f"[{i}] {m.role}: {' '.join(_block_text(b) for b in m.content)}\n")
    return EXIT_OK


# -- parser and the one error table -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colloquy", description="Chat with LLMs that remembers context and stays on topic.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("chat", help="chat (resumes --session if it exists)")
    p.add_argument("--session", metavar="ID", type=name_argument, help="session to resume or start")
    p.add_argument("--user", metavar="ID", type=name_argument, help="the user this session belongs to")
    p.add_argument("--model", metavar="M", help="claude-... (default claude-sonnet-4-6), gpt-..., "
                   "ollama:NAME, vllm:NAME, llamacpp:NAME, or echo (offline)")
    p.add_argument("--system", metavar="TEXT", help="the persona (system prompt)")
    _add_policy(p)
    p.add_argument("--temperature", type=float, metavar="T")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N", help="reply length cap")
    p.add_argument("--no-stream", action="store_true", help="print each reply when complete")
    p.add_argument("--thinking", type=thinking_budget, metavar="N",
                   help="extended thinking with a budget of N tokens (at least 1024), shown "
                   "dimmed on stderr before each answer")
    _add_guards(p)
    _add_db(p)
    p.set_defaults(func=cmd_chat)

    sessions = sub.add_parser("sessions", help="list, show, export, delete sessions")
    ssub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    p = ssub.add_parser("list", help="sessions, newest first")
    p.add_argument("--user", metavar="ID", type=name_argument)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    _add_db(p)
    p.set_defaults(func=cmd_sessions_list)
    for name, func, helptext in (
        ("show", cmd_sessions_show, "print a session's messages"),
        ("export", cmd_sessions_export, "write a session as JSON"),
        ("delete", cmd_sessions_delete, "delete a session and its messages"),
    ):
        p = ssub.add_parser(name, help=helptext)
        _add_session_ref(p)
        if name == "show":
            p.add_argument("--json", action="store_true")
        if name == "export":
            p.add_argument("-o", "--output", metavar="FILE", help="file to write (default stdout)")
        _add_db(p)
        p.set_defaults(func=func)
    from .rights_cli import add_purge_command, add_rename_command, add_user_data_commands

    add_rename_command(ssub, _add_db, _add_session_ref)

    p = sub.add_parser("context", help="the exact request the next turn of a session would send")
    _add_session_ref(p)
    _add_policy(p)
    p.add_argument("--message", metavar="TEXT", help="include this new user message")
    p.add_argument("--model", metavar="M", help="model to build for (default: the session's)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N")
    p.add_argument("--json", action="store_true", help="print the request body as JSON")
    p.add_argument("--exact", action="store_true",
                   help="count input tokens with the provider's count endpoint (Anthropic)")
    _add_db(p)
    p.set_defaults(func=cmd_context)

    from .evals.cli import add_parser as add_eval_command
    from .loadtest import add_parser as add_loadtest_command

    from .guards.cli import add_parser as add_guard_command

    add_eval_command(sub)
    add_loadtest_command(sub)
    add_guard_command(sub)

    from .server.commands import add_serve_command, add_users_commands

    add_serve_command(sub, _add_db, _add_policy, _add_guards)
    users = sub.add_parser("users", help="users: add, list, revoke; export, import, delete")
    usub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add_users_commands(usub, _add_db)
    add_user_data_commands(usub, _add_db)  # users export|import|delete (colloquy.rights_cli)
    add_purge_command(sub, _add_db)
    add_memory_commands(sub, _add_db)
    return parser


#: Arguments that are ids or text (not file paths, whose odd bytes must reach the OS as given).
_TEXT_ARGS = ("id", "ids", "session", "user", "name", "system", "subject", "title", "text",
              "message", "model")


def _check(args: argparse.Namespace) -> None:
    # An invalid UTF-8 byte in argv arrives as a lone surrogate: the text rules (colloquy.text).
    for name in _TEXT_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, clean(value))
        elif isinstance(value, list):
            setattr(args, name, [clean(v) if isinstance(v, str) else v for v in value])
    for flag in ("window", "max_input_tokens", "max_tokens", "limit"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, not {value}")
    t = getattr(args, "temperature", None)
    if t is not None and not 0 <= t <= 2:
        raise ConfigError(f"--temperature must be between 0 and 2, not {t}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        _check(args)
        return func(args)
    except ColloquyError as e:
        sys.stderr.write(f"colloquy: error: {e}\n")
        return EXIT_USAGE if isinstance(e, (ConfigError, InvalidTextError)) else EXIT_ERROR
    except ValueError as e:
        sys.stderr.write(f"colloquy: error: {e}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:  # a file named on the command line: unreadable, unwritable, missing
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"colloquy: error: {where}{e.strerror or e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return EXIT_INTERRUPTED


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
