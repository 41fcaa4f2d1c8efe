"""Files colloquy creates are readable by their owner only (0600, directories 0700), whatever
the umask, and an existing file keeps the mode it has. Real files, real subprocesses."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from colloquy import Chat, EchoModel, SQLiteStore
from colloquy.evals.results import EvalRun
from colloquy.evals.runner import write_run
from colloquy.files import private_open
from colloquy.rights import delete_user


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cli(*args: str, umask: int = 0o022, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "COLLOQUY_"))}
    base.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "colloquy", *args], input="hello there\n",
                          capture_output=True, text=True, env=base, timeout=120,
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_cli_creates_database_wal_shm_locks_and_exports_owner_only(tmp_path: Path,
                                                                        umask: int) -> None:
    data = tmp_path / "data" / "colloquy"  # a data directory that does not exist yet
    db = data / "colloquy.db"
    cli("chat", "--model", "echo", "--session", "s", "--user", "ann", umask=umask,
        env={"COLLOQUY_DB": str(db)})
    user_export, session_export = tmp_path / "ann.json", tmp_path / "s.json"
    cli("users", "export", "ann", "--db", str(db), "-o", str(user_export), umask=umask)
    cli("sessions", "export", "s", "--db", str(db), "-o", str(session_export), umask=umask)
    # The CLI's last connection removed -wal and -shm on exit; any later writer (here plain
    # sqlite3 under umask 0, which alone would make them 0644) creates them with the mode of
    # the database file the CLI created.
    old = os.umask(0)
    try:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("UPDATE conversations SET title = 't'")
        conn.commit()
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.locks"), user_export,
                 session_export]
        assert all(f.exists() for f in files), [f for f in files if not f.exists()]
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
        conn.close()
    finally:
        os.umask(old)
    assert oct(mode(data)) == oct(mode(data.parent)) == "0o700"
    assert json.loads(user_export.read_text())["user_id"] == "ann"


def test_a_store_keeps_its_files_owner_only_through_writes_and_erasure(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SQLiteStore(tmp_path / "x.db")
        chat = Chat(EchoModel(), store=store, session_id="a", user_id="ann")
        chat.send("my secret")
        assert mode(tmp_path / "x.db-wal") == mode(tmp_path / "x.db-shm") == 0o600
        delete_user(store, "ann")  # VACUUM rebuilds the file; wal_checkpoint(TRUNCATE)
        for name in ("x.db", "x.db-wal", "x.db-shm", "x.db.locks"):
            assert mode(tmp_path / name) == 0o600, name
        store.close()
    finally:
        os.umask(old)


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    SQLiteStore(db).close()
    os.chmod(db, 0o640)  # an administrator's choice: a backup group may read it
    store = SQLiteStore(db)
    Chat(EchoModel(), store=store, session_id="a", user_id="ann").send("hi")
    assert mode(db) == 0o640
    store.close()
    out = tmp_path / "export.json"
    out.write_text("old")
    os.chmod(out, 0o644)
    cli("users", "export", "ann", "--db", str(db), "-o", str(out))
    assert mode(out) == 0o644 and json.loads(out.read_text())["user_id"] == "ann"


def test_eval_results_and_report_are_owner_only(tmp_path: Path) -> None:
    run = EvalRun(id="r1", dataset="d", created_at=0.0, runs=[])
    target = write_run(run, tmp_path / "evals")
    assert mode(target) == 0o700
    assert mode(target / "results.json") == mode(target / "report.html") == 0o600


def test_private_open_appends_and_refuses_reading_modes(tmp_path: Path) -> None:
    path = tmp_path / "history"
    with private_open(path, "a") as f:
        f.write("one\n")
    with private_open(path, "a") as f:
        f.write("two\n")
    assert path.read_text() == "one\ntwo\n" and mode(path) == 0o600
    with pytest.raises(ValueError):
        private_open(path, "r")
