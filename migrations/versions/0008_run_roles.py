"""Run roles: a login role per ServerApp launch and per run and node worker for
ClientApps, made and dropped by SECURITY DEFINER functions; CONNECT only for flpg's
roles

The functions are in sql/security/runroles.v1.sql (see its header for who may call
which); `run_roles` keeps one row per run role ever made (the audit trail: which run,
which node ids, asked for by whom, when made and dropped). The downgrade
(runroles.v1.down.sql) drops this database's run roles and gives CONNECT back to
PUBLIC.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from flpg.store.migrate import security_sql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_roles",
        sa.Column("role_name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "node_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("made_for", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("dropped_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('serverapp', 'clientapp')", name=op.f("ck_run_roles_kind_is_app")
        ),
        sa.PrimaryKeyConstraint("role_name", name=op.f("pk_run_roles")),
    )
    op.create_index("ix_run_roles_run_id", "run_roles", ["run_id"], unique=False)
    op.execute(security_sql("runroles.v1"))


def downgrade() -> None:
    op.execute(security_sql("runroles.v1.down"))
    op.drop_index("ix_run_roles_run_id", table_name="run_roles")
    op.drop_table("run_roles")
