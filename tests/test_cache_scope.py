"""Two services over two stores in one process keep their caches apart (colloquy.caches keeps
one registry per store): a deletion in one store never evicts what the other service holds, and
one service's sweep asks its own store only about its own conversations, never the other's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from colloquy import EchoModel, SQLiteStore
from colloquy.caches import sweep_deleted
from colloquy.server import create_app
from colloquy.store.users import issue_token
from server_helpers import bearer


@contextmanager
def two_services(tmp_path: Path, sweep_interval: float = 0.0) -> Iterator[list[dict[str, Any]]]:
    """Services A and B, each over its own SQLite file, each with user ada; running (their
    lifespans run the sweeps when ``sweep_interval`` > 0)."""
    with ExitStack() as stack:
        sites = []
        for name in ("a", "b"):
            store = SQLiteStore(tmp_path / f"{name}.db")
            stack.callback(store.close)
            app = create_app(store=store, model=EchoModel(), environ={}, rate_limit=None,
                             sweep_interval=sweep_interval)
            client = stack.enter_context(TestClient(app))
            sites.append({"store": store, "service": app.state.service, "client": client,
                          "h": bearer(issue_token(store, "ada"))})
        yield sites


def talk(site: dict[str, Any], name: str | None = None) -> str:
    """One turn in the conversation ``name`` (a new one if None): cached by the service.
    Returns its id."""
    c = site["client"]
    if name is None:
        r = c.post("/v1/conversations", headers=site["h"], json={})
        assert r.status_code in (200, 201), r.text
        name = str(r.json()["id"])
    r = c.post(f"/v1/conversations/{name}/messages", headers=site["h"], json={"content": "hello"})
    assert r.status_code == 200, r.text
    conv = site["store"].find_named("ada", name)
    assert conv is not None
    return str(conv.id)


def test_one_service_sweep_never_evicts_the_other_service_cache(tmp_path: Path) -> None:
    with two_services(tmp_path) as (a, b):
        ida, idb = talk(a), talk(b)
        assert ida != idb  # random ids: each store's own
        # B's sweep asks B about B's conversations only: A's id is no conversation of B, and
        # asking B about it would take it for deleted and evict it from A's cache.
        assert sweep_deleted(b["store"]) == set()
        assert sweep_deleted(a["store"]) == set()
        assert a["service"].cached_conversations() == {ida}
        assert b["service"].cached_conversations() == {idb}
        # A conversation really deleted in B's store (as by another process: straight in the
        # database, so only the sweep can tell) goes from B's cache; A's stays.
        with b["store"].transaction() as conn:
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (idb,))
            conn.execute("DELETE FROM conversations WHERE id = ?", (idb,))
        assert sweep_deleted(b["store"]) == {idb}
        assert b["service"].cached_conversations() == set()
        assert a["service"].cached_conversations() == {ida}


def test_running_sweepers_of_two_services_leave_each_other_alone(tmp_path: Path) -> None:
    """The same with the services' own sweepers running every 50 ms."""
    with two_services(tmp_path, sweep_interval=0.05) as (a, b):
        ida, idb = talk(a), talk(b)
        time.sleep(0.6)  # about ten sweeps each
        assert a["service"].cached_conversations() == {ida}
        assert b["service"].cached_conversations() == {idb}


def test_a_deletion_in_one_store_leaves_the_other_service_cache(tmp_path: Path) -> None:
    """The same conversation id in both stores (a library caller names its sessions): deleting
    it in A forgets A's cached Chat at once and leaves B's."""
    with two_services(tmp_path) as (a, b):
        for site in (a, b):
            site["store"].create_conversation(id="c_shared", name="shared", user_id="ada")
            assert talk(site, "shared") == "c_shared"
            assert site["service"].cached_conversations() == {"c_shared"}
        assert a["client"].delete("/v1/conversations/shared", headers=a["h"]).status_code == 204
        assert a["service"].cached_conversations() == set()
        assert b["service"].cached_conversations() == {"c_shared"}
        # B's conversation still answers from its cached Chat, and its sweep keeps it.
        talk(b, "shared")
        assert sweep_deleted(b["store"]) == set()
        assert b["service"].cached_conversations() == {"c_shared"}
