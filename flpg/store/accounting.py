"""Accounting: what a run and each of its nodes moved and spent, read from the
`run_accounting` and `node_accounting` views (docs/auditing.md, "Accounting")."""

from __future__ import annotations

from dataclasses import dataclass

from flpg.errors import NotFound
from flpg.store._exec import one, rows
from flpg.store.db import Connection


@dataclass(frozen=True)
class NodeAccounting:
    """One selected node of a run, seen from the node: `bytes_received` by the
    instructions addressed to it, `bytes_sent` by its replies (array payload bytes)."""

    node_id: int
    node_name: str
    instructions: int
    replies: int
    messages: int
    bytes_received: int
    bytes_sent: int
    clientapp_seconds: float
    """Claimed -> reply written, summed over the instructions it answered."""
    wait_seconds: float
    """Created -> claimed, summed over its claimed instructions."""


@dataclass(frozen=True)
class RunAccounting:
    """One run, seen from its ServerApp: `bytes_sent` by its instructions,
    `bytes_received` by the replies; compute and waiting summed over its nodes."""

    run_id: int
    instructions: int
    replies: int
    messages: int
    bytes_sent: int
    bytes_received: int
    clientapp_seconds: float
    wait_seconds: float
    launches: int
    """ServerApp launches (one per attempt that got as far as its run role)."""
    serverapp_seconds: float
    """Launch -> end of each attempt, summed (a running attempt counts up to now)."""
    queue_seconds: float | None
    """Submitted -> first launch (up to now while pending; None if never launched)."""
    nodes: tuple[NodeAccounting, ...]


def of_run(conn: Connection, run_id: int) -> RunAccounting:
    """The run's accounting and its nodes', read in one transaction; NotFound if the
    connected role sees no run with this id."""
    with conn.transaction():
        row = one(conn, "runs_accounting_get", {"run_id": run_id})
        if row is None:
            raise NotFound(f"run {run_id} does not exist (see `flpg ls`)")
        nodes = tuple(
            NodeAccounting(**r) for r in rows(conn, "run_nodes_accounting_list", {"run_id": run_id})
        )
    return RunAccounting(**row, nodes=nodes)
