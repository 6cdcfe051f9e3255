"""Accounting: the audit views node_accounting and run_accounting (payload bytes and
messages exchanged, ClientApp compute, waiting and ServerApp time, per run and per
node; sql/views/*_accounting.v1.sql, whose SELECT goes to flpg_user and
flpg_auditor and make them security_invoker)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.sql import view

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The views this revision creates, in dependency order: sql/views/<view>.v1.sql.
VIEWS = ("node_accounting", "run_accounting")


def upgrade() -> None:
    for name in VIEWS:
        op.execute(view(name, 1))


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
