from __future__ import annotations

from flpg.store.db import connect


def test_fresh_database_has_the_schema(db_url: str) -> None:
    with connect(db_url) as conn:
        tables = {
            r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
    assert {"runs", "messages", "nodes", "run_nodes", "arrays", "array_chunks"} <= tables
