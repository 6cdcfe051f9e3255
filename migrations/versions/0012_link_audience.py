"""Link audience: `message_arrays.run_id` and `.node_id` (the message's run and node,
kept by a trigger), so that row-level security decides array reads from the link row
(sql/security/trust.v3.sql; measured in benchmarks/RESULTS.md). The downgrade restores
trust.v2's policies and drops the columns.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message_arrays", sa.Column("run_id", sa.BigInteger(), nullable=True))
    op.add_column("message_arrays", sa.Column("node_id", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE message_arrays ma SET run_id = m.run_id,"
        " node_id = coalesce(m.dst_node_id, m.src_node_id)"
        " FROM messages m WHERE m.id = ma.message_id"
    )
    op.alter_column("message_arrays", "run_id", nullable=False)
    op.alter_column("message_arrays", "node_id", nullable=False)
    op.drop_index("ix_message_arrays_array_id", table_name="message_arrays")
    op.create_index(
        "ix_message_arrays_audience", "message_arrays", ["array_id", "node_id"], unique=False
    )
    op.execute(security_sql("trust.v3"))


def downgrade() -> None:
    op.execute(security_sql("trust.v3.down"))
    op.drop_index("ix_message_arrays_audience", table_name="message_arrays")
    op.create_index("ix_message_arrays_array_id", "message_arrays", ["array_id"], unique=False)
    op.drop_column("message_arrays", "node_id")
    op.drop_column("message_arrays", "run_id")
