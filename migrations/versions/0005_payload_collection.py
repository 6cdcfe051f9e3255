"""arrays.collected_at: the link collects payloads nothing live needs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "arrays", sa.Column("collected_at", postgresql.TIMESTAMP(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_arrays_uncollected",
        "arrays",
        ["id"],
        unique=False,
        postgresql_where=sa.text("collected_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_arrays_uncollected", table_name="arrays")
    op.drop_column("arrays", "collected_at")
