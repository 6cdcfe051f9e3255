"""checkpoints and checkpoint_arrays; runs.attempt and runs.max_restarts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.add_column(
        "runs",
        sa.Column("max_restarts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(op.f("ck_runs_attempt_positive"), "runs", "attempt >= 1")
    op.create_check_constraint(
        op.f("ck_runs_max_restarts_not_negative"), "runs", "max_restarts >= 0"
    )
    op.create_table(
        "checkpoints",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "saved_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("attempt >= 1", name=op.f("ck_checkpoints_attempt_positive")),
        sa.CheckConstraint(
            "jsonb_typeof(metrics) = 'object'", name=op.f("ck_checkpoints_metrics_is_object")
        ),
        sa.CheckConstraint("round >= 0", name=op.f("ck_checkpoints_round_not_negative")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_checkpoints_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "checkpoint_arrays",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("array_name", sa.Text(), nullable=False),
        sa.Column("array_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "position >= 0", name=op.f("ck_checkpoint_arrays_position_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["array_id"],
            ["arrays.id"],
            name=op.f("fk_checkpoint_arrays_array_id"),
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["checkpoints.run_id"],
            name=op.f("fk_checkpoint_arrays_run_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "position", name=op.f("pk_checkpoint_arrays")),
        sa.UniqueConstraint(
            "run_id", "array_name", name=op.f("uq_checkpoint_arrays_run_id_array_name")
        ),
    )
    op.create_index(
        "ix_checkpoint_arrays_array_id", "checkpoint_arrays", ["array_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_checkpoint_arrays_array_id", table_name="checkpoint_arrays")
    op.drop_table("checkpoint_arrays")
    op.drop_table("checkpoints")
    op.drop_constraint(op.f("ck_runs_max_restarts_not_negative"), "runs", type_="check")
    op.drop_constraint(op.f("ck_runs_attempt_positive"), "runs", type_="check")
    op.drop_column("runs", "max_restarts")
    op.drop_column("runs", "attempt")
