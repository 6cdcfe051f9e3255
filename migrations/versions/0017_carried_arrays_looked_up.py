"""Carried arrays looked up: the arrays policy of nodes and ClientApps checks each
array's carrying message by index instead of hashing every array link the caller may
see, so that a payload listing or a chunk read no longer pays for the run's whole
history (sql/security/trust.v7.sql). The downgrade restores the earlier policy.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(security_sql("trust.v7"))


def downgrade() -> None:
    op.execute(security_sql("trust.v7.down"))
