"""PostgreSQL for the test suite: the URL from COLLOQUY_TEST_POSTGRES_URL, and throwaway stores.

Each store lives in a fresh schema that is dropped when the store is closed, so tests never see
each other's rows and may run against a shared database. In CI (``CI=true``) a missing URL is a
failure, never a skip: the PostgreSQL store must be tested wherever the suite is trusted.
"""

from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_URL_VAR = "COLLOQUY_TEST_POSTGRES_URL"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VAR) or None


def postgres_kinds() -> list[str]:
    """``["postgres"]``, always: without a server each PostgreSQL variant *skips* (and fails in
    CI), so the run's summary can say what was not tested (see conftest.py), instead of the
    variants silently vanishing from the suite."""
    return ["postgres"]


def require_postgres_url() -> str:
    url = postgres_url()
    if url:
        return url
    message = (
        f"{POSTGRES_URL_VAR} is not set: PostgreSQL tests need a server "
        "(.ci/run starts one; locally see the README, PostgreSQL)"
    )
    if in_ci():
        pytest.fail(message + " — in CI these tests must run, not be skipped")
    pytest.skip(message)


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def throwaway_postgres_store(schema: str | None = None):  # type: ignore[no-untyped-def]
    """A real :class:`PostgresStore` in a fresh schema, dropped again by ``close()``."""
    from colloquy.store.postgres import PostgresStore

    class ThrowawayPostgresStore(PostgresStore):
        def close(self) -> None:
            super().close()
            assert self.schema is not None
            drop_schema(self.url, self.schema)

    return ThrowawayPostgresStore(require_postgres_url(), schema=schema or new_schema(), max_size=8)
