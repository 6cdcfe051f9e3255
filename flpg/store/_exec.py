"""Running named queries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg.rows import dict_row

from flpg.store.db import Connection
from flpg.store.sql import query

Params = Mapping[str, Any]


def rows(conn: Connection, name: str, params: Params | None = None) -> list[dict[str, Any]]:
    """Run the named query and return all rows as dicts."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query(name), params or {})
        return cur.fetchall() if cur.description else []


def one(conn: Connection, name: str, params: Params | None = None) -> dict[str, Any] | None:
    """Run the named query and return its first row, or None if it returned none."""
    found = rows(conn, name, params)
    return found[0] if found else None


def run(conn: Connection, name: str, params: Params | None = None) -> int:
    """Run the named query; return the number of rows it affected."""
    with conn.cursor() as cur:
        cur.execute(query(name), params or {})
        return cur.rowcount


def many(conn: Connection, name: str, params_seq: Iterable[Params]) -> None:
    """Run the named query once per parameter set (pipelined by psycopg)."""
    with conn.cursor() as cur:
        cur.executemany(query(name), params_seq)


def many_returning(
    conn: Connection, name: str, params_seq: Sequence[Params]
) -> list[dict[str, Any]]:
    """Run the named query once per parameter set; one returned row per set, in order."""
    out: list[dict[str, Any]] = []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.executemany(query(name), params_seq, returning=True)
        while True:
            out.extend(cur.fetchall())
            if not cur.nextset():
                break
    return out
