"""Policies as filters: the identity conditions of the ClientApp's and ServerApp's
policies on messages and arrays can no longer be index conditions, and the chunk
tables' policy looks each chunk's array up by primary key, so that a reply write or a
payload read no longer scans every row its run ever had (sql/security/trust.v6.sql).
The downgrade restores the earlier policies.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from flpg.store.migrate import security_sql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(security_sql("trust.v6"))


def downgrade() -> None:
    op.execute(security_sql("trust.v6.down"))
