"""Node removal: `nodes.removed_at`, set by `flpg nodes rm` for an offline node (out of
the federation, its row and history kept; registering the name again brings it back)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "nodes", sa.Column("removed_at", postgresql.TIMESTAMP(timezone=True), nullable=True)
    )
    op.create_check_constraint(
        op.f("ck_nodes_removed_is_offline"), "nodes", "removed_at IS NULL OR status = 'offline'"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_nodes_removed_is_offline"), "nodes", type_="check")
    op.drop_column("nodes", "removed_at")
