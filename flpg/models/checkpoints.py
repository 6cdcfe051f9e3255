"""Checkpoints: a run's global arrays and metrics at the end of its last completed round.

One row per run (replaced each round) and one row per array; the arrays are
ordinary payloads (`arrays` / `array_chunks`). A restarted ServerApp continues
from here.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from flpg.models.base import metadata

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("round", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False),
    Column("saved_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("round >= 0", name="round_not_negative"),
    CheckConstraint("attempt >= 1", name="attempt_positive"),
    CheckConstraint("jsonb_typeof(metrics) = 'object'", name="metrics_is_object"),
)

checkpoint_arrays = Table(
    "checkpoint_arrays",
    metadata,
    Column(
        "run_id",
        BigInteger,
        ForeignKey("checkpoints.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("array_name", Text, nullable=False),
    # Deferred, like message_arrays.array_id: a run's deletion cascades to both sides.
    Column(
        "array_id",
        BigInteger,
        ForeignKey("arrays.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
    UniqueConstraint("run_id", "array_name"),
    CheckConstraint("position >= 0", name="position_not_negative"),
)
Index("ix_checkpoint_arrays_array_id", checkpoint_arrays.c.array_id)
