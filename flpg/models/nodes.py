"""Federation members. Several worker processes may serve one node id."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Identity, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from flpg.models.base import NODE_STATUS, metadata
from flpg.states import NodeStatus

nodes = Table(
    "nodes",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("node_config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", NODE_STATUS, nullable=False, server_default=NodeStatus.ONLINE.value),
    Column("registered_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_seen_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    # Set by `flpg nodes rm` (an offline node): out of the federation, its row and
    # history kept; registering the name again brings it back.
    Column("removed_at", TIMESTAMP(timezone=True)),
    CheckConstraint("name <> ''", name="name_not_empty"),
    CheckConstraint("jsonb_typeof(node_config) = 'object'", name="node_config_is_object"),
    CheckConstraint("jsonb_typeof(labels) = 'object'", name="labels_is_object"),
    CheckConstraint("removed_at IS NULL OR status = 'offline'", name="removed_is_offline"),
)
