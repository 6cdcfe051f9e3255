"""Federation members."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from flpg.store._exec import one, rows, run
from flpg.store.db import Connection


@dataclass(frozen=True)
class Node:
    id: int
    name: str
    node_config: dict[str, Any]
    labels: dict[str, Any]
    status: str
    registered_at: datetime
    last_seen_at: datetime


def register(
    conn: Connection, *, name: str, node_config: dict[str, Any], labels: dict[str, Any]
) -> Node:
    """Register `name` or re-attach to its existing id; the node is online."""
    with conn.transaction():
        row = one(
            conn,
            "nodes_register",
            {"name": name, "node_config": Jsonb(node_config), "labels": Jsonb(labels)},
        )
    assert row is not None
    return Node(**row)


def enrolled(conn: Connection) -> list[tuple[int, str]]:
    """(id, name) of the node ids enrolled for the connected role, by id; empty
    unless the role is an enrolled node's."""
    return [(int(r["id"]), str(r["name"])) for r in rows(conn, "nodes_enrolled")]


def attach(conn: Connection) -> list[Node]:
    """Mark the node ids enrolled for the connected role online and return them, by
    id (an enrolled node's worker does this instead of `register`)."""
    with conn.transaction():
        found = rows(conn, "nodes_attach")
    return sorted((Node(**r) for r in found), key=lambda n: n.id)


def remove(conn: Connection, node_id: int) -> datetime | None:
    """Take offline node `node_id` out of the federation (its row and history kept);
    when it was removed, or None if it is online, removed already or enrolled."""
    row = one(conn, "nodes_remove", {"node_id": node_id})
    return None if row is None else row["removed_at"]


def heartbeat(conn: Connection, node_ids: list[int]) -> None:
    """Record that the nodes' workers are alive."""
    run(conn, "nodes_heartbeat", {"node_ids": node_ids})


def set_offline(conn: Connection, node_ids: list[int]) -> None:
    """Mark nodes offline (a worker deregistering)."""
    run(conn, "nodes_set_offline", {"node_ids": node_ids})


def list_all(conn: Connection) -> list[Node]:
    """Every registered node, by id."""
    return [Node(**r) for r in rows(conn, "nodes_list")]


def mark_silent_offline(conn: Connection, after: float) -> list[tuple[int, str]]:
    """Mark offline the nodes not seen for `after` s; returns their (id, name)."""
    return [(r["id"], r["name"]) for r in rows(conn, "nodes_mark_silent_offline", {"after": after})]
