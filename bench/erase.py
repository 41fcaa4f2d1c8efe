"""What erasing a deleted user costs on PostgreSQL: ``VACUUM FULL`` of every table that can hold
user data (what ``delete_user``, ``colloquy users delete`` and ``DELETE /v1/me`` do), beside
the older rule, the tables the deletion touched only. No targets: it prints figures with the
machine's load.

    python bench/erase.py postgresql://USER:PASS@HOST/DB [--users 50] [--conversations 4]
                                                           [--messages 50] [--deletions 3]

Works in a throwaway schema of that database, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from psycopg import sql

from colloquy.memory.records import Fact
from colloquy.messages import Message
from colloquy.rights import delete_user, discover_tables, erase_deleted, user_tables
from colloquy.store.base import NewMessage
from colloquy.store.postgres import PostgresStore


def _vacuum(store: PostgresStore, tables: list[str]) -> float:
    t0 = time.perf_counter()
    with store.pool.connection() as conn:
        for t in tables:
            conn.execute(sql.SQL("VACUUM (FULL, ANALYZE) {}").format(sql.Identifier(t)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--deletions", type=int, default=3)
    a = ap.parse_args()
    schema = f"bench_erase_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(a.url, schema=schema)
    try:
        roles = ["user", "assistant"]
        for u in range(a.users):
            for c in range(a.conversations):
                cid = f"c{u}_{c}"
                store.create_conversation(id=cid, user_id=f"u{u}")
                store.append(cid, [NewMessage(message=Message(
                    role=roles[i % 2], content=[{"type": "text", "text": f"message {i} " + "words " * 40}]))
                    for i in range(a.messages)])
            store.add_fact(Fact(user_id=f"u{u}", subject="s", statement=f"a fact of u{u}"))
        tables = sorted(user_tables(discover_tables(store)))
        total = a.users * a.conversations * a.messages
        print(f"{total} messages, {a.users * a.conversations} conversations; "
              f"user tables: {', '.join(tables)}")
        for i in range(min(a.deletions, a.users)):
            report = delete_user(store, f"u{i}", erase=False)
            touched = [t for t, n in report.rows.items() if n]
            t0 = time.perf_counter()
            erase_deleted(store, touched)  # every user table (and a CHECKPOINT where allowed)
            t_all = time.perf_counter() - t0
            t_every, t_touched = _vacuum(store, tables), _vacuum(store, touched)
            print(f"deletion {i + 1}: erase_deleted {t_all:.3f} s (CHECKPOINT included); "
                  f"VACUUM FULL of every user table ({len(tables)}) {t_every:.3f} s, of the "
                  f"touched ones ({len(touched)}, the older rule) {t_touched:.3f} s; "
                  f"load {os.getloadavg()[0]:.1f}")
    finally:
        store.close()
        import psycopg

        with psycopg.connect(a.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
