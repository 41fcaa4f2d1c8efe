"""``colloquy memory list|add|forget`` and ``colloquy chat/context --policy ...`` with the offline
models, through the CLI's real entry point (``colloquy.cli.main``, in process for speed;
tests/test_cli.py covers the subprocess behaviour)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from colloquy.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Result]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "COLLOQUY_DB", "COLLOQUY_MODEL"):
        monkeypatch.delenv(var, raising=False)

    def _run(*args: str, stdin: str = "", check: bool = True) -> Result:
        capsys.readouterr()
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse errors
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        result = Result(code, out, err)
        if check and code != 0:
            raise AssertionError(f"exit {code}\nstdout:\n{out}\nstderr:\n{err}")
        return result

    return _run


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "chat.db")


def facts_json(run: Run, db: str, user: str, *extra: str) -> list[dict[str, object]]:
    return json.loads(run("memory", "list", "--user", user, "--json", "--db", db, *extra).stdout)


def test_memory_add_list_forget(run: Run, db: str) -> None:
    fid = run("memory", "add", "--user", "ana", "--subject", "units", "prefers metric units",
              "--db", db).stdout.strip()
    assert fid.startswith("f_")
    again = run("memory", "add", "--user", "ana", "Prefers metric units.", "--db", db)
    assert again.stdout.strip() == fid and "already known" in again.stderr
    run("memory", "add", "--user", "ana", "likes", "green", "tea", "--db", db)
    listed = run("memory", "list", "--user", "ana", "--db", db).stdout.splitlines()
    assert len(listed) == 2
    assert listed[0].startswith(f"{fid}\tunits\tprefers metric units\tsince ")
    assert listed[0].endswith("added by hand")
    assert facts_json(run, db, "bob") == []
    run("memory", "forget", "--user", "ana", fid, "--db", db)
    assert [f["statement"] for f in facts_json(run, db, "ana")] == ["likes green tea"]
    bad = run("memory", "forget", "--user", "ana", "f_nope", "--db", db, check=False)
    assert bad.returncode == 2 and "no such fact" in bad.stderr and "Traceback" not in bad.stderr
    both = run("memory", "forget", "--user", "ana", "--db", db, check=False)
    assert both.returncode == 2 and "--all" in both.stderr
    run("memory", "forget", "--user", "ana", "--all", "--db", db)
    assert facts_json(run, db, "ana") == []


def test_chat_policy_memory_extracts_facts_that_follow_the_user(run: Run, db: str) -> None:
    out = run("chat", "--model", "echo", "--user", "ana", "--session", "laptop", "--policy", "memory",
              "--system", "You are terse.", "--db", db,
              stdin="Hi, I live in Berlin and I prefer metric units.\nActually I moved to Lisbon.\n")
    assert out.stdout.count("echo: received") == 2
    active = {f["subject"]: f for f in facts_json(run, db, "ana")}  # type: ignore[index]
    assert active["home"]["statement"] == "lives in Lisbon"
    assert active["home"]["source_conversation"] == "laptop" and active["home"]["source_seq"] == 3
    history = facts_json(run, db, "ana", "--all")
    berlin = next(f for f in history if f["statement"] == "lives in Berlin")
    assert berlin["superseded_by"] == active["home"]["id"] and berlin["valid_until"] is not None
    # A new session of the same user sees the facts, as data after the persona.
    run("chat", "--model", "echo", "--user", "ana", "--session", "phone", "--system", "You are terse.",
        "--db", db, stdin="hello\n")
    body = json.loads(run("context", "phone", "--policy", "memory", "--message", "how far is it?",
                          "--json", "--db", db).stdout)
    assert body["system"][0]["text"] == "You are terse."
    assert body["system"][1]["text"].startswith("<user_facts>")
    assert '"lives in Lisbon"' in body["system"][1]["text"]
    assert "lives in Berlin" not in body["system"][1]["text"]


def test_facts_need_a_user(run: Run, db: str) -> None:
    out = run("chat", "--model", "echo", "--policy", "memory", "--db", db, stdin="I live in Rome.\n")
    assert "pass --user ID" in out.stderr and "echo: received" in out.stdout


def test_extract_facts_off(run: Run, db: str) -> None:
    run("chat", "--model", "echo", "--user", "ana", "--policy", "facts", "--extract-facts", "off",
        "--db", db, stdin="I live in Berlin.\n")
    assert facts_json(run, db, "ana") == []
    bad = run("chat", "--model", "echo", "--user", "ana", "--extract-facts", "often", "--db", db,
              stdin="hi\n", check=False)
    assert bad.returncode == 2 and "--extract-facts" in bad.stderr


def test_policy_summary_with_a_config_file(run: Run, db: str, tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text('policy = "summary"\nmax_input_tokens = 3000\nwindow = 2\n'
                      '[summary]\nmin_new_turns = 2\n')
    lines = "".join(f"On Monday Maria paid {i} euros for ticket {i}.\n" for i in range(6))
    run("chat", "--model", "echo", "--session", "s", "--policy-config", str(config), "--db", db,
        stdin=lines)
    body = json.loads(run("context", "s", "--policy-config", str(config), "--message", "total?",
                          "--json", "--db", db).stdout)
    summary = body["system"][0]["text"]
    assert summary.startswith("<conversation_summary")
    assert "Maria paid 0 euros" in summary  # the offline summariser (echo chat) kept it
    users = [m["content"][0]["text"] for m in body["messages"] if m["role"] == "user"]
    assert users[-1] == "total?" and "ticket 0" not in " ".join(users)
    # The full log is intact: switching policy sees every turn.
    full = json.loads(run("context", "s", "--policy", "full", "--json", "--db", db).stdout)
    assert len(full["messages"]) == 12
    # The same with JSON, and errors are one clear line.
    cfg = tmp_path / "policy.json"
    cfg.write_text(json.dumps({"policy": "summary", "window": 2, "summary": {"min_new_turns": 2}}))
    body = json.loads(run("context", "s", "--policy-config", str(cfg), "--json", "--db", db).stdout)
    assert body["system"][0]["text"].startswith("<conversation_summary")
    broken = tmp_path / "broken.toml"
    broken.write_text("policy = [")
    bad = run("context", "s", "--policy-config", str(broken), "--db", db, check=False)
    assert bad.returncode == 2 and "not valid TOML" in bad.stderr and "Traceback" not in bad.stderr
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"policy": "summary", "sumary": {}}')
    bad = run("context", "s", "--policy-config", str(unknown), "--db", db, check=False)
    assert bad.returncode == 2 and "unknown keys ['sumary']" in bad.stderr
    bad = run("context", "s", "--policy", "nonsense", "--db", db, check=False)
    assert bad.returncode == 2 and "--policy" in bad.stderr


def test_policy_budget_and_window_names(run: Run, db: str) -> None:
    run("chat", "--model", "echo", "--session", "s", "--db", db,
        stdin="".join(f"message {i}\n" for i in range(5)))
    body = json.loads(run("context", "s", "--policy", "window", "--window", "2", "--json", "--db", db).stdout)
    assert [m["content"][0]["text"] for m in body["messages"] if m["role"] == "user"] == ["message 3", "message 4"]
    body = json.loads(run("context", "s", "--policy", "budget", "--max-input-tokens", "60", "--json",
                          "--db", db).stdout)
    assert 0 < len(body["messages"]) < 10
    bad = run("context", "s", "--policy", "memory", "--full", "--db", db, check=False)
    assert bad.returncode == 2 and "--policy full" in bad.stderr


def test_the_docs_offline_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    doc = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "lives in Porto" in b]
    exec(compile(snippet, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "['prefers metric units', 'lives in Porto']"


def test_cost_lists_the_memory_models_calls(run: Run, db: str) -> None:
    out = run("chat", "--model", "echo", "--session", "s", "--user", "ana", "--policy", "memory",
              "--db", db, stdin="I live in Lisbon\nmy name is Ana\n/cost\n").stdout
    assert "[facts] offline-facts: 2 calls" in out
    assert "session: 4 calls" in out and "price unknown" not in out


def test_the_retriever_flag_picks_the_recall_of_the_default_and_recall_policies(
        run: Run, db: str) -> None:
    from colloquy.cli import build_parser, policy_from_args
    from colloquy.context.default import DefaultPolicy

    def policy(*flags: str) -> object:
        return policy_from_args(build_parser().parse_args(["chat", "--model", "echo", *flags]))

    bm25 = policy("--retriever", "bm25")
    assert isinstance(bm25, DefaultPolicy) and bm25.retriever == "bm25" and not bm25.dense
    named = policy("--policy", "default", "--retriever", "bm25")
    assert isinstance(named, DefaultPolicy) and not named.dense
    assert policy("--policy", "recall", "--retriever", "bm25").parts[0].retriever == "bm25"  # type: ignore[attr-defined]
    run("chat", "--model", "echo", "--session", "r", "--db", db, "--retriever", "bm25",
        stdin="hello\n")
    for flags, said in ((("--retriever", "hybrid", "--window", "3"), "--retriever is for the default"),
                        (("--policy", "summary", "--retriever", "bm25"), "recalls nothing")):
        bad = run("chat", "--model", "echo", "--db", db, *flags, stdin="hi\n", check=False)
        assert bad.returncode == 2 and said in bad.stderr, bad.stderr
