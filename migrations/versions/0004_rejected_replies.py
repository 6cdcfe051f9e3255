"""messages.rejected_reason: why a strategy left a reply out of its round

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("rejected_reason", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_messages_rejections_only_of_replies"),
        "messages",
        "reply_to IS NOT NULL OR rejected_reason IS NULL",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_messages_rejections_only_of_replies"), "messages", type_="check")
    op.drop_column("messages", "rejected_reason")
