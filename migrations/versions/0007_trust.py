"""Trust: roles, grants and row-level security; who wrote each row

- `principals` / `principal_nodes`: which login role is which node, user, ServerApp or
  ClientApp (written by admin only; policies compare them with `current_user`).
- `runs.submitted_by`, `messages.created_by`, `arrays.created_by`,
  `run_logs.written_by`: the role that wrote the row, forced by a trigger. Rows
  written before this revision are attributed to the role that migrates.
- The group roles (sql/security/roles.v1.sql) and the functions, triggers, grants
  and policies (sql/security/trust.v1.sql) are SQL files this revision names, like
  the views; the downgrade undoes trust.v1 (trust.v1.down.sql) but keeps the
  cluster-wide group roles, which other databases on the cluster may use.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from flpg.store.migrate import security_sql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, writer column): defaults to current_user; a trigger forces it.
WRITERS = (
    ("runs", "submitted_by"),
    ("messages", "created_by"),
    ("arrays", "created_by"),
    ("run_logs", "written_by"),
)


def upgrade() -> None:
    for table, column in WRITERS:
        op.add_column(
            table,
            sa.Column(column, sa.Text(), server_default=sa.text("CURRENT_USER"), nullable=False),
        )
    op.create_table(
        "principals",
        sa.Column("role_name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("user_name", sa.Text(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role_name <> ''", name=op.f("ck_principals_role_name_not_empty")),
        sa.CheckConstraint(
            "kind IN ('node', 'user', 'serverapp', 'clientapp', 'link', 'exec', 'auditor')",
            name=op.f("ck_principals_kind_known"),
        ),
        sa.CheckConstraint(
            "(run_id IS NOT NULL) = (kind IN ('serverapp', 'clientapp'))",
            name=op.f("ck_principals_run_iff_app"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_principals_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("role_name", name=op.f("pk_principals")),
    )
    op.create_index("ix_principals_run_id", "principals", ["run_id"], unique=False)
    op.create_table(
        "principal_nodes",
        sa.Column("role_name", sa.Text(), nullable=False),
        sa.Column("node_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_name"],
            ["principals.role_name"],
            name=op.f("fk_principal_nodes_role_name"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_principal_nodes_node_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("role_name", "node_id", name=op.f("pk_principal_nodes")),
    )
    op.create_index("ix_principal_nodes_node_id", "principal_nodes", ["node_id"], unique=False)
    op.execute(security_sql("roles.v1"))
    op.execute(security_sql("trust.v1"))


def downgrade() -> None:
    op.execute(security_sql("trust.v1.down"))
    op.drop_index("ix_principal_nodes_node_id", table_name="principal_nodes")
    op.drop_table("principal_nodes")
    op.drop_index("ix_principals_run_id", table_name="principals")
    op.drop_table("principals")
    for table, column in reversed(WRITERS):
        op.drop_column(table, column)
