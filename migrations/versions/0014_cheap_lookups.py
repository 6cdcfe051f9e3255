"""Cheap lookups: the identity and writer lookups of the row-level security policies
as PL/pgSQL `SELECT ... INTO` (a few microseconds a call, where `RETURN (SELECT ...)`
took up to a hundred), same results (sql/security/trust.v5.sql; measured in
benchmarks/RESULTS.md). The downgrade restores the earlier bodies.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(security_sql("trust.v5"))


def downgrade() -> None:
    op.execute(security_sql("trust.v5.down"))
