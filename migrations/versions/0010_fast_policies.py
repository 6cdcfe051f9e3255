"""Fast policies: trust.v2 keeps every role's rows as trust.v1 and lets the planner
evaluate the identity lookups once per statement (sql/security/trust.v2.sql; measured
in benchmarks/RESULTS.md). The downgrade restores trust.v1's definitions.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(security_sql("trust.v2"))


def downgrade() -> None:
    op.execute(security_sql("trust.v2.down"))
