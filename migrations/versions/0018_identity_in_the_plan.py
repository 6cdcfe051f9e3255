"""Identity folded into the plan: the lookups of the caller's node ids and run that
every policy makes are IMMUTABLE, so a connection evaluates them when it plans a
statement, not at each execution (sql/security/trust.v8.sql says why that is safe).
The downgrade makes them STABLE again.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(security_sql("trust.v8"))


def downgrade() -> None:
    op.execute(security_sql("trust.v8.down"))
