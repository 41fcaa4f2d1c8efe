"""A throwaway PostgreSQL cluster of the test's own, for tests that stop and restart the server.

Never the shared server: a test that restarts PostgreSQL runs its own cluster (Debian's
``initdb`` and ``pg_ctl``) in a temp dir on a free loopback port, as the ``postgres`` user when
the tests run as root (``initdb`` refuses root), and removes it afterwards. Without the binaries
the test skips locally and fails in CI (``.ci/run`` installs the ``postgresql`` package).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pg_helpers import in_ci
from server_helpers import free_port


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """``initdb`` + ``pg_ctl start`` on loopback; ``url`` reaches its database ``colloquy``."""

    def __init__(self) -> None:
        bin_dir = pg_bin()
        if bin_dir is None:
            message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
            if in_ci():
                pytest.fail(message + " — .ci/run installs the postgresql package")
            pytest.skip(message + " (apt-get install postgresql)")
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="colloquy-pgcluster-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.start()
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
                  "CREATE DATABASE colloquy")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/colloquy"

    def _run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        return proc.stdout

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   "-c fsync=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop (fast: every session is cut) and start again (``pg_ctl restart`` would hand the
        server our stdout instead of its log file)."""
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)
