"""Principals: which database login role is which node, user, ServerApp or ClientApp.

Written only by admin (enrolment); row-level security policies compare these rows
with `current_user`, which a client cannot change. Roles, grants, policies and the
functions they use are SQL in `sql/security/`, not SQLAlchemy metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP

from flpg.models.base import metadata

PRINCIPAL_KINDS = ("node", "user", "serverapp", "clientapp", "link", "exec", "auditor")
"""Each kind has its group role `flpg_<kind>`; a login role is a member of exactly one."""

principals = Table(
    "principals",
    metadata,
    Column("role_name", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    # The person behind a user role (shown by the CLI; policies use the role name).
    Column("user_name", Text),
    # The run a ServerApp or ClientApp role is bound to.
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE")),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("role_name <> ''", name="role_name_not_empty"),
    CheckConstraint(
        "kind IN (" + ", ".join(f"'{k}'" for k in PRINCIPAL_KINDS) + ")", name="kind_known"
    ),
    CheckConstraint(
        "(run_id IS NOT NULL) = (kind IN ('serverapp', 'clientapp'))", name="run_iff_app"
    ),
)
Index("ix_principals_run_id", principals.c.run_id)

principal_nodes = Table(
    "principal_nodes",
    metadata,
    Column(
        "role_name",
        Text,
        ForeignKey("principals.role_name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("node_id", BigInteger, ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
)
Index("ix_principal_nodes_node_id", principal_nodes.c.node_id)

# The audit trail of run roles: one row per ServerApp or ClientApp role ever made,
# kept after the role is dropped (no foreign key: it outlives its run, as history).
run_roles = Table(
    "run_roles",
    metadata,
    Column("role_name", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("run_id", BigInteger, nullable=False),
    # The node ids a ClientApp role answered for (empty for a ServerApp role).
    Column("node_ids", ARRAY(BigInteger), nullable=False, server_default=text("'{}'")),
    # The login role (an exec, a node, or admin) that asked for it.
    Column("made_for", Text, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    Column("dropped_at", TIMESTAMP(timezone=True)),
    CheckConstraint("kind IN ('serverapp', 'clientapp')", name="kind_is_app"),
)
Index("ix_run_roles_run_id", run_roles.c.run_id)
