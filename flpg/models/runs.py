"""Runs, their node selection, their log and their per-round metrics."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from flpg.models.base import LOG_STREAM, RUN_STATUS, metadata
from flpg.states import RunStatus


def _ts(name: str, *, nullable: bool = True, default: str | None = None) -> Column[object]:
    return Column(
        name,
        TIMESTAMP(timezone=True),
        nullable=nullable,
        server_default=text(default) if default else None,
    )


runs = Table(
    "runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("app_hash", Text, ForeignKey("apps.hash"), nullable=False),
    Column("app_name", Text, nullable=False),
    Column("run_config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", RUN_STATUS, nullable=False, server_default=RunStatus.PENDING.value),
    Column("reason", Text),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    _ts("submitted_at", nullable=False, default="now()"),
    _ts("started_at"),
    _ts("finished_at"),
    Column("exec_id", Text),
    Column("serverapp_pid", Integer),
    _ts("heartbeat_at"),
    _ts("stop_requested_at"),
    # 1 for the first launch; each restart (automatic or `flpg resume`) adds one.
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    # Automatic restarts allowed after a failure (`flpg run --max-restarts`).
    Column("max_restarts", Integer, nullable=False, server_default=text("0")),
    # When the current attempt was claimed by its exec (`exec_id`); the link takes
    # back a run left `starting` for too long (its exec died before launching it).
    _ts("claimed_at"),
    # The role that wrote the row: defaults to, and is forced to, current_user (trigger).
    Column("submitted_by", Text, nullable=False, server_default=text("CURRENT_USER")),
    CheckConstraint("jsonb_typeof(run_config) = 'object'", name="run_config_is_object"),
    CheckConstraint("attempt >= 1", name="attempt_positive"),
    CheckConstraint("max_restarts >= 0", name="max_restarts_not_negative"),
    CheckConstraint(
        "(status IN ('finished', 'failed', 'stopped')) = (finished_at IS NOT NULL)",
        name="finished_at_iff_terminal",
    ),
    CheckConstraint("status <> 'failed' OR reason IS NOT NULL", name="failed_has_reason"),
    CheckConstraint(
        "status NOT IN ('starting', 'running') OR exec_id IS NOT NULL",
        name="launched_has_exec",
    ),
    CheckConstraint(
        "status NOT IN ('running', 'finished') OR started_at IS NOT NULL",
        name="running_has_started_at",
    ),
    CheckConstraint(
        "status <> 'starting' OR claimed_at IS NOT NULL", name="starting_has_claimed_at"
    ),
)
Index(
    "ix_runs_pending_queue",
    runs.c.priority.desc(),
    runs.c.id,
    postgresql_where=text("status = 'pending'"),
)
# The link's sweep of runs left `starting` (runs_take_back_unlaunched).
Index(
    "ix_runs_starting",
    runs.c.claimed_at,
    postgresql_where=text("status = 'starting'"),
)
Index(
    "ix_runs_active_exec",
    runs.c.exec_id,
    postgresql_where=text("status IN ('starting', 'running')"),
)

run_nodes = Table(
    "run_nodes",
    metadata,
    Column(
        "run_id",
        BigInteger,
        ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("node_id", BigInteger, ForeignKey("nodes.id"), primary_key=True),
    # When a worker of this node last claimed a message of this run: claims serve
    # the least recently served run first.
    Column("last_claimed_at", TIMESTAMP(timezone=True), nullable=True),
)
Index("ix_run_nodes_node_id", run_nodes.c.node_id)

run_logs = Table(
    "run_logs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    _ts("ts", nullable=False, default="clock_timestamp()"),
    Column("stream", LOG_STREAM, nullable=False),
    Column("line", Text, nullable=False),
    # The role that wrote the row: defaults to, and is forced to, current_user (trigger).
    Column("written_by", Text, nullable=False, server_default=text("CURRENT_USER")),
)
Index("ix_run_logs_run_id_id", run_logs.c.run_id, run_logs.c.id)

round_metrics = Table(
    "round_metrics",
    metadata,
    Column(
        "run_id",
        BigInteger,
        ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("round", Integer, primary_key=True),
    Column("phase", Text, primary_key=True),
    Column("metrics", JSONB, nullable=False),
    Column("num_replies", Integer, nullable=False, server_default=text("0")),
    Column("num_failures", Integer, nullable=False, server_default=text("0")),
    _ts("recorded_at", nullable=False, default="now()"),
    CheckConstraint("round >= 0", name="round_not_negative"),
    CheckConstraint("phase IN ('train', 'evaluate', 'server_evaluate')", name="phase_known"),
    CheckConstraint("jsonb_typeof(metrics) = 'object'", name="metrics_is_object"),
)
