"""Fresh statistics: the link analyzes the coordination tables while they are young
(each time one doubled since its last ANALYZE), so that plans kept by the hot
connections are made with statistics (sql/security/statistics.v1.sql). The
downgrade drops the function.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(security_sql("statistics.v1"))


def downgrade() -> None:
    op.execute(security_sql("statistics.v1.down"))
