"""Runs: submission, selection, lifecycle, heartbeats and round metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from flpg.errors import InvalidState, NotFound
from flpg.states import STOPPING, TERMINAL, LogStream, RunStatus
from flpg.store import logs as store_logs
from flpg.store._exec import one, rows, run
from flpg.store.db import Connection
from flpg.store.text import REASON_LIMIT, storable


@dataclass(frozen=True)
class Run:
    id: int
    app_hash: str
    app_name: str
    run_config: dict[str, Any]
    status: str
    reason: str | None
    priority: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exec_id: str | None
    serverapp_pid: int | None
    heartbeat_at: datetime | None
    stop_requested_at: datetime | None
    attempt: int = 1
    max_restarts: int = 0
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class Claim:
    """A run an exec claimed (now `starting`): launch this attempt of it."""

    run_id: int
    attempt: int


@dataclass(frozen=True)
class TakenBack:
    """A run the link took back from an exec that never launched it."""

    run_id: int
    status: str
    """`pending` (queued again as its next attempt), or `stopped` if a stop was requested."""
    reason: str


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    app_name: str
    app_hash: str
    status: str
    reason: str | None
    num_nodes: int
    rounds_completed: int | None
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class SelectedNode:
    id: int
    name: str
    status: str


def create(
    conn: Connection,
    *,
    app_hash: str,
    app_name: str,
    bundle: bytes,
    run_config: dict[str, Any],
    node_ids: list[int],
    priority: int = 0,
    max_restarts: int = 0,
) -> int:
    """Store the bundle (once per hash) and a pending run with its node selection,
    in one transaction; wake exec workers."""
    with conn.transaction():
        run(
            conn,
            "apps_insert",
            {"hash": app_hash, "name": app_name, "bundle": bundle, "size": len(bundle)},
        )
        row = one(
            conn,
            "runs_insert",
            {
                "app_hash": app_hash,
                "app_name": app_name,
                "run_config": Jsonb(run_config),
                "priority": priority,
                "max_restarts": max_restarts,
            },
        )
        assert row is not None
        run_id = int(row["id"])
        run(conn, "run_nodes_insert", {"run_id": run_id, "node_ids": node_ids})
        run(conn, "runs_notify_exec", {"run_id": run_id})
    return run_id


def get(conn: Connection, run_id: int) -> Run:
    """The run; NotFound if there is none with this id."""
    row = one(conn, "runs_get", {"run_id": run_id})
    if row is None:
        raise NotFound(f"run {run_id} does not exist (see `flpg ls`)")
    return Run(**row)


def list_recent(conn: Connection, limit: int = 100) -> list[RunSummary]:
    """The newest runs first."""
    return [RunSummary(**r) for r in rows(conn, "runs_list", {"limit": limit})]


def selection(conn: Connection, run_id: int) -> list[SelectedNode]:
    """The run's node selection with each node's status."""
    return [SelectedNode(**r) for r in rows(conn, "run_nodes_list", {"run_id": run_id})]


def online_node_ids(conn: Connection, run_id: int) -> list[int]:
    """Selected nodes of the run that are online, ascending."""
    return [int(r["node_id"]) for r in rows(conn, "run_nodes_list_online", {"run_id": run_id})]


def starting_on_nodes(conn: Connection, run_ids: list[int], node_ids: list[int]) -> list[int]:
    """Which of `run_ids` are pending or running (no stop requested) with some of
    `node_ids` in their selection: a node worker may start their ClientApp ahead."""
    if not run_ids or not node_ids:
        return []
    found = rows(conn, "runs_list_starting", {"run_ids": run_ids, "node_ids": node_ids})
    return [int(r["id"]) for r in found]


def claim_next(conn: Connection, exec_id: str, *, exclude: Sequence[int] = ()) -> Claim | None:
    """Exec: claim the next pending run (status -> starting, `claimed_at` now); None when
    no run is pending. One run per call: start its ServerApp (`mark_running`) before
    claiming the next. `exclude`: runs whose previous ServerApp the exec still has."""
    row = one(conn, "runs_claim_next", {"exec_id": exec_id, "exclude": list(exclude)})
    return None if row is None else Claim(int(row["id"]), int(row["attempt"]))


def mark_running(conn: Connection, run_id: int, exec_id: str, pid: int) -> bool:
    """Exec: the ServerApp process `pid` of a run it claimed started. False if the run is
    no longer `starting` under this exec (stopped, or taken back by the link): the exec
    must then terminate that process. Safe to repeat after a lost connection."""
    return run(conn, "runs_mark_running", {"run_id": run_id, "exec_id": exec_id, "pid": pid}) == 1


def finish(
    conn: Connection,
    run_id: int,
    status: RunStatus,
    reason: str | None = None,
    *,
    attempt: int | None = None,
) -> RunStatus | None:
    """Record the outcome once and cancel undelivered messages, in one transaction.

    A failure of a run with restarts left (`max_restarts`) puts it back in the queue
    as its next attempt instead. Returns the run's new status ("pending" when it
    restarts), or None if it had already ended or `attempt` is no longer current.
    """
    if status not in TERMINAL:
        raise ValueError(f"{str(status)!r} is not a terminal run status")
    if reason is not None:  # often app text (an exception's message): storable, bounded
        reason = storable(reason, REASON_LIMIT)
    params = {"run_id": run_id, "status": status, "reason": reason, "attempt": attempt}
    with conn.transaction():
        if not run(conn, "runs_finish", params):
            return None
        cancel_messages(conn, run_id)
        if status == RunStatus.FAILED and _requeue(conn, run_id, automatic=True):
            return RunStatus.PENDING
    return status


def cancel_messages(conn: Connection, run_id: int) -> None:
    """An ended run's undelivered instructions and untaken replies -> cancelled (two
    statements, in this order: see run_cancel_replies). Call inside the transaction
    that ended the run."""
    run(conn, "messages_cancel_for_run", {"run_id": run_id})
    run(conn, "messages_cancel_replies_for_run", {"run_id": run_id})


def _requeue(conn: Connection, run_id: int, *, automatic: bool) -> int | None:
    """Ended run -> pending as its next attempt (see run_requeue); wakes the execs."""
    row = one(conn, "runs_requeue", {"run_id": run_id, "automatic": automatic})
    if row is None:
        return None
    store_logs.append(conn, run_id, [(LogStream.EVENT, str(row["reason"]))])
    run(conn, "runs_notify_exec", {"run_id": run_id})
    return int(row["attempt"])


def resume(conn: Connection, run_id: int) -> int:
    """Queue a failed or stopped run again; it continues from its checkpoint.

    Returns the new attempt number. Raises NotFound, or InvalidState if the run
    has not ended, finished, or has no checkpoint.
    """
    with conn.transaction():
        attempt = _requeue(conn, run_id, automatic=False)
        if attempt is not None:
            return attempt
    current = get(conn, run_id)
    if current.status == RunStatus.FINISHED:
        raise InvalidState(f"run {run_id} already finished; there is nothing to resume")
    if current.status not in TERMINAL:
        raise InvalidState(
            f"run {run_id} is {current.status}; only failed or stopped runs can be resumed"
        )
    raise InvalidState(
        f"run {run_id} has no checkpoint (it never completed a round); "
        "submit the app again with `flpg run`"
    )


def delete_ended(conn: Connection, run_id: int) -> bool:
    """Retention: delete an ended run and all it owns (messages, payloads, selection,
    logs, metrics) in one transaction; False if the run is absent or not ended."""
    with conn.transaction():
        run(conn, "messages_delete_for_run", {"run_id": run_id})
        return run(conn, "runs_delete", {"run_id": run_id}) == 1


def heartbeat(conn: Connection, run_id: int, attempt: int) -> bool | None:
    """ServerApp heartbeat: True when a stop was requested, None when `attempt` is
    no longer the run's running attempt (it ended or was restarted)."""
    row = one(conn, "runs_heartbeat", {"run_id": run_id, "attempt": attempt})
    return None if row is None else bool(row["stop_requested"])


def request_stop(conn: Connection, run_id: int) -> str:
    """Stop a run in any state that has not ended.

    A pending or starting run (no ServerApp yet) is `stopped` at once and its messages
    cancelled; a running one gets a stop request that its exec applies (its ServerApp's
    heartbeat does, if the exec is gone). Returns the status after the request:
    "stopped" or "stopping". Raises NotFound, or InvalidState if the run already ended.
    """
    with conn.transaction():
        row = one(conn, "runs_request_stop", {"run_id": run_id})
        if row is not None and row["status"] == RunStatus.STOPPED:
            cancel_messages(conn, run_id)
            return RunStatus.STOPPED
        if row is not None:
            run(conn, "runs_notify_exec", {"run_id": run_id})
            return STOPPING
    current = get(conn, run_id)
    raise InvalidState(f"run {run_id} already ended ({current.status})")


def stop_requested(conn: Connection, exec_id: str) -> list[int]:
    """Exec: its runs that have a stop request."""
    return [int(r["id"]) for r in rows(conn, "runs_list_stop_requested", {"exec_id": exec_id})]


def ended(conn: Connection, run_ids: list[int]) -> list[int]:
    """Those of `run_ids` that have ended or no longer exist."""
    if not run_ids:
        return []
    return [int(r["id"]) for r in rows(conn, "runs_list_ended", {"ids": run_ids})]


def fail_silent(conn: Connection, after: float, startup: float) -> list[int]:
    """Link: fail running runs whose ServerApp has not heart-beaten for `after` s, or
    not at all within `startup` s of its launch (or restart them, if they have
    restarts left)."""
    with conn.transaction():
        found = rows(conn, "runs_fail_silent", {"after": after, "startup": startup})
        failed = [int(r["id"]) for r in found]
        for run_id in failed:
            cancel_messages(conn, run_id)
            _requeue(conn, run_id, automatic=True)
    return failed


def take_back_unlaunched(conn: Connection, after: float) -> list[TakenBack]:
    """Link: runs `starting` for more than `after` s since their claim (their exec never
    launched them) go back to the queue as their next attempt, or end `stopped` if a
    stop was requested; each with an event in its log, in one transaction."""
    with conn.transaction():
        found = rows(conn, "runs_take_back_unlaunched", {"after": after})
        taken = [TakenBack(int(r["id"]), str(r["status"]), str(r["reason"])) for r in found]
        for t in taken:
            cancel_messages(conn, t.run_id)
            store_logs.append(conn, t.run_id, [(LogStream.EVENT, t.reason)])
            if t.status == RunStatus.PENDING:
                run(conn, "runs_notify_exec", {"run_id": t.run_id})
    return taken


def record_round(
    conn: Connection,
    run_id: int,
    server_round: int,
    phase: str,
    metrics: dict[str, Any],
    num_replies: int,
    num_failures: int,
) -> None:
    """Store (or replace) one round's aggregated metrics."""
    run(
        conn,
        "round_metrics_upsert",
        {
            "run_id": run_id,
            "round": server_round,
            "phase": phase,
            "metrics": Jsonb(metrics),
            "num_replies": num_replies,
            "num_failures": num_failures,
        },
    )


def round_metrics(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """All stored round metrics of a run, by round then phase."""
    return rows(conn, "round_metrics_list_for_run", {"run_id": run_id})


def message_counts(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """Message counts of a run by state and direction."""
    return rows(conn, "messages_count_for_run", {"run_id": run_id})


def superseded(
    conn: Connection, exec_id: str, attempts: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Exec: those of its ServerApps' `(run id, attempt)`s that are no longer their
    run's current attempt on this exec (ended, taken back, restarted or deleted)."""
    if not attempts:
        return []
    found = rows(
        conn,
        "runs_list_superseded",
        {
            "exec_id": exec_id,
            "ids": [run_id for run_id, _ in attempts],
            "attempts": [attempt for _, attempt in attempts],
        },
    )
    return [(int(r["id"]), int(r["attempt"])) for r in found]


@dataclass(frozen=True)
class RunDetails:
    """Everything `flpg show` reports about one run."""

    run: Run
    selection: list[SelectedNode]
    message_counts: list[dict[str, Any]]
    """`{is_reply, state, n}` per direction and state."""
    rounds: list[dict[str, Any]]
    """`{round, phase, metrics, num_replies, num_failures}`, by round then phase."""
    checkpoint_round: int | None
    """The round of the run's latest checkpoint; None if it saved none."""


def details(conn: Connection, run_id: int) -> RunDetails:
    """The run with its node selection, message counts, round metrics and checkpoint
    round, read in one transaction; NotFound if there is no run with this id."""
    from flpg.store import checkpoints as store_checkpoints

    with conn.transaction():
        found = get(conn, run_id)
        checkpoint = store_checkpoints.get(conn, run_id)
        return RunDetails(
            run=found,
            selection=selection(conn, run_id),
            message_counts=message_counts(conn, run_id),
            rounds=round_metrics(conn, run_id),
            checkpoint_round=None if checkpoint is None else checkpoint.round,
        )
