"""Crash recovery of round-transient payloads (sql/recovery.sql).

Replies and broadcasts that no checkpoint references keep their chunks in the
UNLOGGED `array_chunks_transient`: they skip the WAL, and a PostgreSQL crash empties
them. The link notices (the `transient_marker` row is gone with them), marks the lost
arrays, and sends every run that lost some back to the queue as its next attempt,
which continues from its last checkpoint. Until then no checkpoint is saved and no
run ends (checkpoints_upsert, runs_finish): a result computed from lost payloads
never sticks.
"""

from __future__ import annotations

from dataclasses import dataclass

from flpg.states import LogStream, RunStatus
from flpg.store import logs as store_logs
from flpg.store import runs as store_runs
from flpg.store._exec import one, rows, run
from flpg.store.db import Connection


@dataclass(frozen=True)
class Recovery:
    """What one recovery did: arrays marked lost, and `(run id, status, reason)` of
    each run it sent back to the queue (or ended, when a stop was requested)."""

    lost_arrays: int
    runs: list[tuple[int, str, str]]


def needed(conn: Connection) -> bool:
    """Whether a crash emptied the unlogged tables since the last recovery."""
    row = one(conn, "transient_marker_present")
    return row is None or not row["present"]


def recover(conn: Connection) -> Recovery | None:
    """Link: recover from a crash, in one transaction; None when no recovery was
    needed or another link did it first."""
    if not needed(conn):
        return None
    with conn.transaction():
        found = one(conn, "transient_marker_recover")
        if found is None or not found["recovered"]:
            return None
        restarted = rows(conn, "runs_restart_lost", {"run_ids": list(found["run_ids"])})
        for r in restarted:
            run_id = int(r["id"])
            store_runs.cancel_messages(conn, run_id)
            store_logs.append(conn, run_id, [(LogStream.EVENT, str(r["reason"]))])
            if r["status"] == RunStatus.PENDING:
                run(conn, "runs_notify_exec", {"run_id": run_id})
    return Recovery(
        int(found["arrays"]),
        [(int(r["id"]), str(r["status"]), str(r["reason"])) for r in restarted],
    )
