"""Cheap lookups: the row-level security policies read the connection's identity from
the views my_run and my_nodes (sql/views/; no function call per InitPlan), and the
lookups that stay functions are PL/pgSQL `SELECT ... INTO` (a few microseconds a call,
where `RETURN (SELECT ...)` took up to a hundred). The same rows for every role
(sql/security/trust.v5.sql; measured in benchmarks/RESULTS.md). The downgrade restores
trust.v4's policies and lookups and drops the views.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql
from flpg.store.sql import view

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The views this revision creates, in dependency order: sql/views/<view>.v1.sql.
VIEWS = ("my_run", "my_nodes")


def upgrade() -> None:
    for name in VIEWS:
        op.execute(view(name, 1))
    op.execute(security_sql("trust.v5"))


def downgrade() -> None:
    op.execute(security_sql("trust.v5.down"))
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
