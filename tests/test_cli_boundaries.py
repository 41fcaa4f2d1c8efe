"""The CLI as people use it, as real subprocesses: databases that are not there, not databases,
read-only or named by an empty --db; provider-prefixed models that must resume as they started;
every flag combination --help promises; line editing and history at the prompt; unknown slash
commands; destructive commands that need a unit and a confirmation; unknown users; stdin that is
not valid UTF-8. Every failure is one line on stderr with exit status 1 or 2, never a traceback,
and loses nothing."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from colloquy import Chat, SQLiteStore
from colloquy.cli import build_parser, main, policy_from_args
from colloquy.context.compose import ComposedPolicy
from colloquy.errors import ConfigError
from fake_anthropic import FakeAnthropic, message, text as a_text
from fake_openai import FakeOpenAI, Turn


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No API keys, no COLLOQUY_DB, a private data directory (the default database and the
    prompt history live there)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("ANTHROPIC_", "OPENAI_", "OLLAMA_", "VLLM_", "LLAMACPP_", "COLLOQUY_"))}
    base.update({"XDG_DATA_HOME": str(tmp_path / "data"), "LC_ALL": "C.UTF-8", **extra})
    return base


def cli(tmp_path: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*prefix, sys.executable, "-m", "colloquy", *args], input=stdin,
                       capture_output=True, env=env or env_for(tmp_path), timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode("utf-8", "replace"),
                                       p.stderr.decode("utf-8", "replace"))


@pytest.fixture
def inproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
           ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``colloquy ARGS`` through :func:`colloquy.cli.main` in this process (fast, for loops over
    many commands): an exception main() does not turn into one line fails the test."""
    for k in list(os.environ):
        if k.startswith(("ANTHROPIC_", "OPENAI_", "COLLOQUY_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)
    return run


def one_line_error(p: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The error line, after checking it is the only one, with no traceback."""
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.returncode in ((code,) if code else (1, 2)), (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("colloquy: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# -- --db ---------------------------------------------------------------------------------------------

READERS = [["sessions", "list"], ["sessions", "show", "s"], ["sessions", "export", "s"],
           ["sessions", "delete", "s"], ["context", "s"], ["users", "list"],
           ["users", "export", "ada"], ["memory", "list", "--user", "ada"],
           ["purge", "--older-than", "1d", "--dry-run"]]
WRITERS = [["chat", "--model", "echo"], ["users", "add", "ada"],
           ["memory", "add", "--user", "ada", "likes", "tea"]]


@pytest.mark.parametrize("content", [b"hello\n", os.urandom(50_000)], ids=["text", "random"])
def test_a_file_that_is_not_a_database_is_one_line_and_left_alone(
    tmp_path: Path, content: bytes, inproc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(content)
    for args in READERS + WRITERS:
        line = one_line_error(inproc(*args, "--db", str(db), stdin=b"hi\n"))
        assert "cannot open database" in line and "not a database" in line, line
    p = cli(tmp_path, "sessions", "list", env=env_for(tmp_path, COLLOQUY_DB=str(db)))
    assert "not a database" in one_line_error(p)
    assert db.read_bytes() == content


def test_an_empty_db_is_refused_never_the_default_database(
    tmp_path: Path, inproc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    for args in READERS + WRITERS:
        line = one_line_error(inproc(*args, "--db", "", stdin=b"hi\n"), code=2)
        assert "the database path is empty" in line
    assert files_under(tmp_path / "data") == []  # the default database was never created
    p = cli(tmp_path, "sessions", "list", "--db", "")  # and as a real process: one line
    assert "the database path is empty" in one_line_error(p, code=2)


def test_reading_a_database_that_does_not_exist_creates_nothing(
    tmp_path: Path, inproc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    missing = tmp_path / "nowhere" / "deeper" / "x.db"
    for args in READERS:
        assert "no database at" in one_line_error(inproc(*args, "--db", str(missing)), code=1)
    assert not (tmp_path / "nowhere").exists()
    # Writing commands create it (and its directory), as a first chat always did.
    assert cli(tmp_path, "chat", "--model", "echo", "--db", str(missing), stdin=b"hi\n").returncode == 0
    assert missing.exists()


def _without_root_powers() -> tuple[str, ...]:
    """As root, drop the capability that ignores file permissions (CI runs as root)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--")


@pytest.fixture
def chmod_back(tmp_path: Path) -> Iterator[None]:
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def test_read_only_databases_read_and_refuse_writes_in_one_line(
    tmp_path: Path, chmod_back: None
) -> None:
    prefix = _without_root_powers()
    db = tmp_path / "ro.db"
    assert cli(tmp_path, "chat", "--model", "echo", "--db", str(db), "--session", "s",
               stdin=b"first\n").returncode == 0
    rodir = tmp_path / "rodir"
    rodir.mkdir()
    shutil.copy(db, rodir / "c.db")
    os.chmod(db, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.chmod(rodir, 0o555)
    p = cli(tmp_path, "chat", "--model", "echo", "--db", str(db), "--session", "s",
            stdin=b"second\n", prefix=prefix)
    assert "read" in one_line_error(p, code=1)  # "cannot write to database ...: readonly"
    listed = cli(tmp_path, "sessions", "list", "--db", str(db), prefix=prefix)
    assert listed.returncode == 0 and listed.stdout.startswith("s\t")  # still readable
    shown = cli(tmp_path, "sessions", "show", "s", "--db", str(db), prefix=prefix)
    assert "first" in shown.stdout and "second" not in shown.stdout
    p = cli(tmp_path, "sessions", "list", "--db", str(rodir / "c.db"), prefix=prefix)
    if p.returncode:
        assert "cannot open database" in one_line_error(p)
    else:
        assert p.stdout.startswith("s\t")
    p = cli(tmp_path, "chat", "--model", "echo", "--db", str(rodir / "new" / "x.db"),
            stdin=b"hi\n", prefix=prefix)
    assert "cannot open database" in one_line_error(p)


def test_files_named_on_the_command_line_fail_in_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    cli(tmp_path, "chat", "--model", "echo", "--db", db, "--session", "s", "--user", "ada",
        stdin=b"hi\n")
    for args in (["sessions", "export", "s", "-o", str(tmp_path / "no" / "x.json")],
                 ["users", "export", "ada", "-o", str(tmp_path / "no" / "x.json")],
                 ["users", "import", str(tmp_path / "missing.json")]):
        one_line_error(cli(tmp_path, *args, "--db", db))


# -- models keep their provider --------------------------------------------------------------------


@pytest.mark.parametrize("spec, var", [("ollama:llama3", "OLLAMA_BASE_URL"),
                                       ("vllm:mistral", "VLLM_BASE_URL"),
                                       ("llamacpp:smol", "LLAMACPP_BASE_URL"),
                                       ("openai:my-model", "OPENAI_BASE_URL")])
def test_a_prefixed_model_resumes_with_its_provider(tmp_path: Path, spec: str, var: str) -> None:
    db = str(tmp_path / "c.db")
    with FakeOpenAI() as server:
        env = env_for(tmp_path, **{var: server.base_url, "OPENAI_API_KEY": "k"})
        server.push(*(Turn(text="fine") for _ in range(4)))
        assert cli(tmp_path, "chat", "--model", spec, "--session", "x", "--db", db,
                   stdin=b"hi\n", env=env).returncode == 0
        p = cli(tmp_path, "chat", "--session", "x", "--db", db, stdin=b"again\n", env=env)
        assert p.returncode == 0, p.stderr
        assert f"model {spec.split(':')[1]}" in p.stderr
        bodies = [r.body for r in server.requests if r.body and r.body.get("messages")]
        assert [b["model"] for b in bodies] == [spec.split(":")[1]] * len(bodies)
        assert len([b for b in bodies if b["messages"][-1]["content"] == "again"]) == 1
        assert cli(tmp_path, "context", "x", "--db", db, env=env).returncode == 0
    assert SQLiteStore(db).get_conversation("x").model == spec


def test_an_anthropic_model_named_with_its_prefix_resumes_too(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    with FakeAnthropic(api_key="sk-test") as fake:
        fake.enqueue(*(message(a_text("fine")) for _ in range(4)))
        env = env_for(tmp_path, ANTHROPIC_BASE_URL=fake.base_url, ANTHROPIC_API_KEY="sk-test")
        for stdin, model in ((b"hi\n", ["--model", "anthropic:my-model"]), (b"again\n", [])):
            p = cli(tmp_path, "chat", *model, "--session", "a", "--db", db, "--no-stream",
                    stdin=stdin, env=env)
            assert p.returncode == 0, p.stderr
        models = [r.body["model"] for r in fake.requests if r.path.endswith("/messages")]
        assert [m for m in models if m != "claude-haiku-4-5"] == ["my-model", "my-model"]
    assert SQLiteStore(db).get_conversation("a").model == "anthropic:my-model"


def test_conversations_created_by_the_service_keep_the_prefix(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from colloquy.server import create_app
    from colloquy.store.users import issue_token

    store = SQLiteStore(tmp_path / "s.db")
    token = issue_token(store, "ada")
    env = {"OLLAMA_BASE_URL": "http://127.0.0.1:9/v1"}
    app = create_app(store=store, model="ollama:llama3", environ=env)
    r = TestClient(app).post("/v1/conversations", json={}, headers={"Authorization": f"Bearer {token}"})
    conv = store.get_conversation(r.json()["id"])
    assert conv.model == "ollama:llama3"
    resumed = Chat(store=store, session_id=conv.id)
    assert (resumed.model.provider, resumed.model.name) == ("ollama", "llama3")


def test_a_session_stored_without_its_prefix_says_how_to_resume(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SQLiteStore(db).create_conversation(id="old", model="llama3")  # stored before the fix
    line = one_line_error(cli(tmp_path, "chat", "--session", "old", "--db", str(db), stdin=b"x\n"))
    assert "stored with model 'llama3'" in line and "ollama:llama3" in line


# -- flags ---------------------------------------------------------------------------------------


def policy(*argv: str) -> object:
    return policy_from_args(build_parser().parse_args(["chat", *argv]))


@pytest.mark.parametrize("name", ["summary", "facts", "recall", "memory"])
def test_every_policy_takes_the_flags_its_help_promises(name: str) -> None:
    built = policy("--policy", name, "--max-input-tokens", "4000", "--window", "4",
                   "--memory-model", "offline-summariser")
    assert isinstance(built, ComposedPolicy) and built.max_input_tokens == 4000
    assert built.recent.turns == 4  # type: ignore[attr-defined]
    assert type(policy("--policy", "window", "--window", "4")).__name__ == "RollingWindow"
    assert type(policy("--policy", "budget", "--max-input-tokens", "900")).__name__ == "TokenBudget"
    assert type(policy("--window", "3")).__name__ == "RollingWindow"
    assert type(policy("--full")).__name__ == "FullHistory"


@pytest.mark.parametrize("argv, says", [
    (["--policy", "window", "--max-input-tokens", "100"], "--policy window takes --window"),
    (["--policy", "budget", "--window", "3"], "--policy budget takes --max-input-tokens"),
    (["--policy", "full", "--window", "3"], "--policy full takes neither"),
    (["--window", "3", "--max-input-tokens", "100"], "need a --policy that uses both"),
    (["--full", "--window", "3"], "--full sends everything"),
])
def test_flags_a_policy_would_ignore_are_refused(argv: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        policy(*argv)


def test_memory_policy_with_budget_and_window_runs_in_chat_and_context(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    flags = ["--policy", "memory", "--max-input-tokens", "4000", "--window", "4",
             "--memory-model", "offline-summariser"]
    p = cli(tmp_path, "chat", "--model", "echo", "--session", "m", "--user", "ana", "--db", db,
            *flags, stdin=b"I live in Lisbon.\nwhere do I live?\n")
    assert p.returncode == 0, p.stderr
    p = cli(tmp_path, "context", "m", "--db", db, "--message", "next", *flags)
    assert p.returncode == 0, p.stderr


def test_argv_that_is_not_utf8_follows_the_text_rules(tmp_path: Path) -> None:
    """An invalid byte in an argument (decoded with surrogateescape) is U+FFFD in text, as on
    stdin; in a name or an id it is refused, naming the byte (as U+FFFD, caf\xe9 and caf\xe8
    would be one session), never a traceback."""
    db = str(tmp_path / "c.db")
    args = [b"chat", b"--model", b"echo", b"--session", b"cafe", b"--user", b"z",
            b"--system", b"be \xe9", b"--db", db.encode()]
    for _ in range(2):
        p = subprocess.run([sys.executable.encode(), b"-m", b"colloquy", *args], input=b"hi\n",
                           capture_output=True, env=env_for(tmp_path), timeout=120)
        assert p.returncode == 0, p.stderr
    conv = SQLiteStore(db).get_conversation("cafe")
    assert (conv.user_id, conv.persona, conv.last_seq) == ("z", "be \ufffd", 4)
    for flag, raw in ((b"--session", b"caf\xe9"), (b"--user", b"z\xff")):
        named = [b"--session", b"cafe", b"--user", b"z"]
        named[named.index(flag) + 1] = raw
        p = subprocess.run([sys.executable.encode(), b"-m", b"colloquy", b"chat", b"--model",
                            b"echo", *named, b"--db", db.encode()], input=b"hi\n",
                           capture_output=True, env=env_for(tmp_path), timeout=120)
        err = p.stderr.decode()
        assert p.returncode == 2 and "Traceback" not in err, err
        assert f"argument {flag.decode()}: '{raw.decode('ascii', 'backslashreplace')}' is not " \
               "valid UTF-8" in err
    assert [c.id for c in SQLiteStore(db).list_conversations()] == ["cafe"]
    p = cli(tmp_path, "sessions", "show", "caf\udce9", "--db", db)  # what argv decoding gives
    assert p.returncode == 2 and "is not valid UTF-8" in p.stderr


@pytest.mark.parametrize("args", [["--session", ""], ["--user", " "], ["--model", ""]])
def test_explicitly_empty_ids_are_refused_never_replaced(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "c.db"
    p = cli(tmp_path, "chat", *(["--model", "echo"] if args[0] != "--model" else []), *args,
            "--db", str(db), stdin=b"hi\n")
    assert "empty" in one_line_error(p, code=2)
    assert not db.exists() or SQLiteStore(db).list_conversations() == []


@pytest.mark.parametrize("blank", ["   ", "\u200b", "\ufeff", "\u00ad", "\u2060 \u200d"],
                         ids=["spaces", "zwsp", "bom", "soft-hyphen", "mixed"])
def test_a_piped_blank_line_is_skipped_and_the_chat_goes_on(tmp_path: Path, blank: str) -> None:
    """A line that shows nothing (colloquy.text.is_blank) is skipped like an empty one: the
    later lines are still sent, and the chat ends well."""
    db = str(tmp_path / "c.db")
    p = cli(tmp_path, "chat", "--model", "echo", "--session", "p", "--db", db,
            stdin=f"a\n{blank}\nb\n".encode())
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "empty" not in p.stderr
    texts = [sm.message.text for sm in SQLiteStore(db).load("p") if sm.message.role == "user"]
    assert texts == ["a", "b"]


# -- the interactive prompt ------------------------------------------------------------------------


class Terminal:
    """``colloquy ARGS`` on a pseudo-terminal, as a person types."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.master, slave = pty.openpty()
        env = env_for(tmp_path, TERM="xterm", COLUMNS="100", LINES="30")
        self.proc = subprocess.Popen([sys.executable, "-m", "colloquy", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.out = b""

    def read_until(self, marker: bytes, timeout: float = 30) -> None:
        start, deadline = len(self.out), time.monotonic() + timeout
        while marker not in self.out[start:]:
            assert time.monotonic() < deadline, f"no {marker!r} in {self.out[-300:]!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    break

    def type(self, data: bytes) -> None:
        os.write(self.master, data)
        self.read_until(b"you> ")

    def close(self) -> None:
        os.write(self.master, b"/quit\r")
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)


def test_the_prompt_edits_lines_and_keeps_a_private_history(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    t = Terminal(tmp_path, "chat", "--model", "echo", "--session", "tty", "--db", db)
    t.read_until(b"you> ")
    t.type(b"abc\x1b[D\x1b[DX\r")  # Left, Left, then X: edited in place
    t.type(b"\x1b[A\r")  # Up: the previous line again
    t.type(b"/foo\r")
    assert b"unknown command /foo" in t.out
    t.close()
    texts = [sm.message.text for sm in SQLiteStore(db).load("tty") if sm.role == "user"]
    assert texts == ["aXbc", "aXbc"]
    history = tmp_path / "data" / "colloquy" / "history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert "aXbc" in history.read_text()
    # A new session recalls the last one's lines: Up, as many times as lines came after it.
    lines = history.read_text().splitlines()
    ups = len(lines) - max(i for i, line in enumerate(lines) if line == "aXbc")
    t = Terminal(tmp_path, "chat", "--model", "echo", "--session", "tty2", "--db", db)
    t.read_until(b"you> ")
    t.type(b"\x1b[A" * ups + b"\r")
    t.close()
    assert [sm.message.text for sm in SQLiteStore(db).load("tty2")][:1] == ["aXbc"]


def test_a_typed_line_that_shows_nothing_is_skipped_and_the_prompt_comes_back(
        tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    t = Terminal(tmp_path, "chat", "--model", "echo", "--session", "zw", "--db", db)
    t.read_until(b"you> ")
    t.type(b"before\r")
    t.type("\u200b\ufeff\r".encode())
    t.type(b"after\r")
    t.close()
    assert t.proc.returncode == 0
    assert b"empty" not in t.out
    texts = [sm.message.text for sm in SQLiteStore(db).load("zw") if sm.message.role == "user"]
    assert texts == ["before", "after"]


def test_slash_commands_unknown_ones_and_messages_that_start_with_a_slash(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    p = cli(tmp_path, "chat", "--model", "echo", "--session", "s", "--db", db,
            stdin=b"/foo\n/help\n//etc/hosts is a file\n/quit\nnever sent\n")
    assert p.returncode == 0 and "unknown command /foo" in p.stderr and "/history" in p.stdout
    assert [sm.message.text for sm in SQLiteStore(db).load("s") if sm.role == "user"] == [
        "/etc/hosts is a file"]


@pytest.mark.parametrize("env_extra", [{"PYTHONIOENCODING": "utf-8:strict"},
                                       {"PYTHONIOENCODING": "utf-8:surrogateescape"},
                                       {"LC_ALL": "C"}])
def test_stdin_that_is_not_utf8_never_stops_the_chat_nor_poisons_it(
    tmp_path: Path, env_extra: dict[str, str]
) -> None:
    db = str(tmp_path / "c.db")
    env = env_for(tmp_path, **env_extra)
    p = cli(tmp_path, "chat", "--model", "echo", "--session", "u8", "--user", "zed", "--db", db,
            stdin=b"first ok\ncaf\xe9 bad\nthird \xff\xfe ok\n", env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    texts = [sm.message.text for sm in SQLiteStore(db).load("u8") if sm.role == "user"]
    assert texts[0] == "first ok" and len(texts) == 3
    assert all(t.encode("utf-8") for t in texts) and "\ufffd" in texts[1]
    for args in (["users", "export", "zed"], ["sessions", "export", "u8"]):
        out = tmp_path / f"{args[0]}.json"
        assert cli(tmp_path, *args, "-o", str(out), "--db", db).returncode == 0
        json.loads(out.read_bytes().decode("utf-8"))
    assert SQLiteStore(db).get_conversation("u8").title == "first ok"


# -- destructive commands ----------------------------------------------------------------------------


def test_purge_needs_a_unit_and_a_confirmation(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    for sid in ("keep-1", "keep-2"):
        cli(tmp_path, "chat", "--model", "echo", "--session", sid, "--db", db, stdin=b"hello\n")
    for args in (["--older-than", "0"], ["--older-than", "30"], ["--older-than", "0", "--yes"]):
        assert "unit" in one_line_error(cli(tmp_path, "purge", *args, "--db", db), code=2)
    assert "add --yes" in one_line_error(cli(tmp_path, "purge", "--older-than", "0s", "--db", db),
                                        code=2)
    dry = cli(tmp_path, "purge", "--older-than", "0s", "--dry-run", "--db", db)
    assert dry.returncode == 0 and "keep-1" in dry.stdout
    assert len(SQLiteStore(db).list_conversations()) == 2
    assert cli(tmp_path, "purge", "--older-than", "0s", "--yes", "--db", db).returncode == 0
    assert SQLiteStore(db).list_conversations() == []


def test_unknown_users_are_errors_not_empty_exports(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    cli(tmp_path, "chat", "--model", "echo", "--session", "s", "--user", "ada", "--db", db,
        stdin=b"hello\n")
    out = tmp_path / "out.json"
    line = one_line_error(cli(tmp_path, "users", "export", "adaa", "-o", str(out), "--db", db), code=1)
    assert "no user 'adaa'" in line and not out.exists()
    assert "no user 'adaa'" in one_line_error(
        cli(tmp_path, "users", "delete", "adaa", "--yes", "--db", db), code=1)
    assert cli(tmp_path, "users", "export", "ada", "-o", str(out), "--db", db).returncode == 0
    assert json.loads(out.read_text())["sessions"]
