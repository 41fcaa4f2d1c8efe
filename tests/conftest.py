"""Shared fixtures and small builders for the test suites.

``store`` runs a test once per store kind. Another suite can add a kind (e.g. PostgreSQL) by
appending its name to :data:`STORE_KINDS` and teaching :func:`make_store` to build it, so every
contract test in tests/test_store.py then runs against it too.

Back ends that need a service (PostgreSQL, chromium) are never silently left out: their tests
are collected everywhere and *skip* where the service is missing, the run's summary names each
back end that was not tested and how to enable it, and with ``COLLOQUY_REQUIRE_BACKENDS``
(``.ci/run`` sets ``postgres,chromium``) the run fails if any test of a required back end was
skipped or deselected, or none ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from colloquy.messages import Message, StoredMessage
from colloquy.store import MemoryStore, SQLiteStore, Store
from colloquy.tokens import TokenCounter
from pg_helpers import POSTGRES_URL_VAR, postgres_kinds, throwaway_postgres_store

#: Every store kind the contract suite runs against ("postgres" always: without
#: COLLOQUY_TEST_POSTGRES_URL those tests skip, and fail in CI; see tests/pg_helpers.py).
STORE_KINDS: list[str] = ["memory", "sqlite", *postgres_kinds()]


def make_store(kind: str, tmp_path: Path) -> Store:
    """A fresh, empty store of ``kind``; files go under ``tmp_path``."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "colloquy-test.db")
    if kind == "postgres":
        return throwaway_postgres_store()  # a fresh schema, dropped on close()
    raise ValueError(f"unknown store kind {kind!r}")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Path) -> Iterator[Store]:
    """One fresh store per store kind (the test runs once per kind)."""
    s = make_store(store_kind, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def _uncalibrated_shared_counter() -> Iterator[None]:
    """Each test starts with the process-wide token counter as a new process has it: a test
    whose model (a fake Claude, say) bills other sizes than colloquy estimates calibrates it,
    and a later test's budgets and cache breakpoints would move with that calibration."""
    from colloquy.tokens import counter as shared

    saved = dict(shared._factors)
    shared._factors.clear()
    yield
    shared._factors.clear()
    shared._factors.update(saved)


@pytest.fixture
def counter() -> TokenCounter:
    """A private token counter, so calibration by one test never leaks into another."""
    return TokenCounter()


def stored(messages: Sequence[Message], conversation_id: str = "c_test") -> list[StoredMessage]:
    """Wrap messages as a stored log numbered 1..n (what a store's ``load`` returns)."""
    return [
        StoredMessage(conversation_id=conversation_id, seq=i, message=m)
        for i, m in enumerate(messages, start=1)
    ]


# -- which back ends this run really tested -------------------------------------------------------

#: Back ends that need a service, and how to enable each.
BACKENDS: dict[str, str] = {
    "postgres": f"export {POSTGRES_URL_VAR}=postgresql://colloquy:colloquy@127.0.0.1:5432/"
                "colloquy_test (README: Tests against PostgreSQL)",
    "chromium": "apt-get install chromium; export COLLOQUY_TEST_CHROMIUM=/usr/bin/chromium",
}
REQUIRE_VAR = "COLLOQUY_REQUIRE_BACKENDS"
#: Test modules that test one back end as a whole.
_MODULE_BACKENDS = {"test_postgres.py": "postgres", "test_web.py": "chromium"}
_outcomes: dict[str, dict[str, list[str]]] = {
    b: {"passed": [], "skipped": [], "deselected": [], "failed": []} for b in BACKENDS
}


def backend_of(item: pytest.Item) -> str | None:
    """The service back end a test exercises: its module's, a ``postgres`` parameter, or a
    fixture named for PostgreSQL (``postgres_store``...)."""
    name = Path(str(item.fspath)).name
    if name in _MODULE_BACKENDS:
        return _MODULE_BACKENDS[name]
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(v == "postgres" for v in params.values() if isinstance(v, str)):
        return "postgres"
    if any("postgres" in f for f in getattr(item, "fixturenames", ())):
        return "postgres"
    return None


def _skipped_for(report: pytest.TestReport) -> str | None:
    """The back end a skip was for, from its reason (a test not classified above, too)."""
    text = str(report.longrepr)
    if POSTGRES_URL_VAR in text:
        return "postgres"
    if "chromium" in text:
        return "chromium"
    return None


def required_backends() -> list[str]:
    wanted = [b.strip() for b in os.environ.get(REQUIRE_VAR, "").split(",") if b.strip()]
    unknown = set(wanted) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"{REQUIRE_VAR} names unknown back ends {sorted(unknown)}; "
                                f"known: {sorted(BACKENDS)}")
    return wanted


def pytest_configure(config: pytest.Config) -> None:
    required_backends()  # a typo in the variable is an error before anything runs


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # before -k / -m deselect anything, so deselection is seen too
        backend = backend_of(item)
        if backend is not None:
            item.user_properties.append(("backend", backend))


def _backend(item: pytest.Item) -> str | None:
    return next((v for k, v in item.user_properties if k == "backend"), None)


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    for item in items:
        backend = _backend(item)
        if backend is not None:
            _outcomes[backend]["deselected"].append(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    backend = next((v for k, v in report.user_properties if k == "backend"), None)
    if backend is None and report.skipped:
        backend = _skipped_for(report)
    if backend is None:
        return
    if report.skipped:
        _outcomes[backend]["skipped"].append(report.nodeid)
    elif report.failed:
        _outcomes[backend]["failed"].append(report.nodeid)
    elif report.when == "call" and report.passed:
        _outcomes[backend]["passed"].append(report.nodeid)


def _untested() -> dict[str, str]:
    """Back ends with a test that did not run, or with no test run at all: why, in words."""
    out: dict[str, str] = {}
    for backend, seen in _outcomes.items():
        missing = [f"{len(seen[k])} {k}" for k in ("skipped", "deselected") if seen[k]]
        if missing:
            out[backend] = ", ".join(missing)
        elif not seen["passed"] and not seen["failed"]:
            out[backend] = "none of its tests ran in this session"
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    missing = {b: why for b, why in _untested().items() if b in required_backends()}
    if missing and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    untested = _untested()
    if not untested:
        terminalreporter.write_line(f"back ends tested: memory, sqlite, {', '.join(BACKENDS)}")
        return
    required = required_backends()
    terminalreporter.write_sep("=", "BACK ENDS NOT TESTED", red=True, bold=True)
    for backend, why in untested.items():
        flag = f" -- FAILS the run ({REQUIRE_VAR})" if backend in required else ""
        terminalreporter.write_line(f"{backend}: {why}{flag}", red=True, bold=True)
        terminalreporter.write_line(f"    to test it: {BACKENDS[backend]}")
