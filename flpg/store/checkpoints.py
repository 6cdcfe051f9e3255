"""Checkpoints: saving a run's arrays and metrics after a round, and reading them back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from flpg.errors import StaleAttempt
from flpg.store._exec import many, one, rows, run
from flpg.store.db import Connection
from flpg.store.payloads import ArrayRef


@dataclass(frozen=True)
class StoredCheckpoint:
    run_id: int
    round: int
    attempt: int
    metrics: dict[str, Any]
    saved_at: float


def save(
    conn: Connection,
    run_id: int,
    attempt: int,
    server_round: int,
    arrays: list[tuple[str, int]],
    metrics: dict[str, Any],
    *,
    promote: bool = True,
) -> None:
    """Replace the run's checkpoint with `(array name, array id)`s already written.

    One transaction: the previous checkpoint's payloads are deleted unless a message
    still carries them or the new checkpoint keeps them; the kept arrays that were
    round-transient (a broadcast, a reply) become durable (`promote=False`: the
    caller knows none is, and the statement is skipped). Raises StaleAttempt (and
    writes nothing) unless `attempt` is the run's current attempt and the run is
    running, and after a crash until the link has recovered (sql/recovery.sql).
    """
    with conn.transaction():
        saved = one(
            conn,
            "checkpoints_upsert",
            {
                "run_id": run_id,
                "attempt": attempt,
                "round": server_round,
                "metrics": Jsonb(metrics),
            },
        )
        if saved is None:
            raise StaleAttempt(
                f"run {run_id} is no longer running as attempt {attempt} "
                "(it was restarted or ended, or PostgreSQL crashed and the link is "
                f"restarting its runs); checkpoint of round {server_round} not saved"
            )
        run(
            conn,
            "checkpoint_arrays_replace_old",
            {"run_id": run_id, "keep": [array_id for _, array_id in arrays]},
        )
        many(
            conn,
            "checkpoint_arrays_insert",
            [
                {"run_id": run_id, "position": i, "array_name": name, "array_id": array_id}
                for i, (name, array_id) in enumerate(arrays)
            ],
        )
        if promote:
            run(conn, "checkpoint_arrays_make_durable", {"run_id": run_id})


def get(conn: Connection, run_id: int) -> StoredCheckpoint | None:
    """The run's latest checkpoint, if it saved one."""
    row = one(conn, "checkpoints_get", {"run_id": run_id})
    return None if row is None else StoredCheckpoint(**row)


def array_refs(conn: Connection, run_id: int) -> list[ArrayRef]:
    """The checkpoint's arrays, in order (read them with `payloads.read`)."""
    return [
        ArrayRef(**{**r, "shape": tuple(r["shape"]), "digest": bytes(r["digest"])})
        for r in rows(conn, "checkpoint_arrays_list", {"run_id": run_id})
    ]
