"""A stored array's chunks are in the table of its durability class: array_chunks
(checkpoints, WAL-logged) or array_chunks_transient (replies and broadcasts, UNLOGGED).
Tests that count or damage chunks reach them through these helpers."""

from __future__ import annotations

from typing import Any

from flpg.store.db import Connection

ALL_CHUNKS = (
    "(SELECT array_id, seq, data FROM array_chunks"
    " UNION ALL SELECT array_id, seq, data FROM array_chunks_transient)"
)
"""Every chunk of both classes, as a subquery: `FROM {ALL_CHUNKS} c`."""


def chunk_table(conn: Connection, array_id: int) -> str:
    """The table holding `array_id`'s chunks."""
    row = conn.execute("SELECT durable FROM arrays WHERE id = %s", (array_id,)).fetchone()
    assert row is not None, f"no array {array_id}"
    return "array_chunks" if row[0] else "array_chunks_transient"


def on_chunks_of(conn: Connection, array_id: int, sql: str, params: Any = None) -> int:
    """Run `sql`, written against `array_chunks`, on the table of `array_id`'s chunks;
    returns its row count."""
    table = chunk_table(conn, array_id)
    return conn.execute(sql.replace("array_chunks", table), params).rowcount


def on_all_chunks(conn: Connection, sql: str, params: Any = None) -> int:
    """Run `sql`, written against `array_chunks`, on both chunk tables; returns the
    total row count."""
    return sum(
        conn.execute(sql.replace("array_chunks", table), params).rowcount
        for table in ("array_chunks", "array_chunks_transient")
    )
