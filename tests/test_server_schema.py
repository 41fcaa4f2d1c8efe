"""Property-based checks of the API against its own OpenAPI description (schemathesis): for
every operation, generated requests (valid and invalid bodies, odd ids, non-UTF-8 bytes) get
only documented statuses, never a 500, responses that match their schemas, and correct Allow
headers. Derandomised, so CI runs the same cases every time."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from colloquy import EchoModel, SQLiteStore
from colloquy.server import create_app
from colloquy.store.users import issue_token

_STATE: dict[str, Any] = {}


def _app() -> Any:
    _STATE["dir"] = tempfile.mkdtemp(prefix="colloquy-schema-")
    store = SQLiteStore(Path(_STATE["dir"]) / "schema.db")
    _STATE["token"] = issue_token(store, "ada")
    _STATE["store"] = store
    return create_app(store=store, model=EchoModel(), environ={}, rate_limit=None)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@pytest.fixture(scope="module", autouse=True)
def _close_store() -> Any:
    yield
    _STATE["store"].close()
    shutil.rmtree(_STATE["dir"], ignore_errors=True)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_to_its_description(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {_STATE['token']}"})
