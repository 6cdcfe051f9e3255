"""Messages: one row per instruction (ServerApp -> node) or reply (node -> ServerApp).

The database enforces the protocol: an instruction's destination must be in its
run's node selection (composite foreign key to `run_nodes`), a reply's source
likewise, and an instruction has at most one reply (unique `reply_to`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from flpg.models.base import MESSAGE_STATE, metadata
from flpg.states import MESSAGES_DST_IN_SELECTION, MESSAGES_SRC_IN_SELECTION, MessageState

messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("src_node_id", BigInteger),
    Column("dst_node_id", BigInteger),
    Column(
        "reply_to",
        BigInteger,
        ForeignKey("messages.id", ondelete="CASCADE"),
        unique=True,
    ),
    Column("group_id", Text, nullable=False, server_default=text("''")),
    Column("message_type", Text, nullable=False),
    Column("state", MESSAGE_STATE, nullable=False, server_default=MessageState.QUEUED.value),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    Column("ttl_seconds", Double, nullable=False),
    Column("deadline", TIMESTAMP(timezone=True), nullable=False),
    Column("claimed_by", Text),
    Column("claimed_at", TIMESTAMP(timezone=True)),
    Column("lease_until", TIMESTAMP(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("finished_at", TIMESTAMP(timezone=True)),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("configs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error_code", Integer),
    Column("error_reason", Text),
    # Set by the ServerApp on a reply its strategy could not use (wrong names,
    # shapes or dtypes, NaN/Inf, no weight): why it was left out of the round.
    Column("rejected_reason", Text),
    # Chosen by the sender, unique per run: a send retried after a lost connection
    # finds the instructions its first try committed instead of inserting them again.
    Column("send_key", Text),
    # The role that wrote the row: defaults to, and is forced to, current_user (trigger).
    Column("created_by", Text, nullable=False, server_default=text("CURRENT_USER")),
    ForeignKeyConstraint(
        ["run_id", "dst_node_id"],
        ["run_nodes.run_id", "run_nodes.node_id"],
        name=MESSAGES_DST_IN_SELECTION,
    ),
    ForeignKeyConstraint(
        ["run_id", "src_node_id"],
        ["run_nodes.run_id", "run_nodes.node_id"],
        name=MESSAGES_SRC_IN_SELECTION,
    ),
    CheckConstraint(
        "(reply_to IS NULL AND src_node_id IS NULL AND dst_node_id IS NOT NULL)"
        " OR (reply_to IS NOT NULL AND dst_node_id IS NULL AND src_node_id IS NOT NULL)",
        name="direction",
    ),
    CheckConstraint("message_type <> ''", name="message_type_not_empty"),
    CheckConstraint("ttl_seconds > 0", name="ttl_positive"),
    CheckConstraint(
        "state <> 'claimed' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)",
        name="claimed_has_lease",
    ),
    # A reply is queued until its ServerApp takes it (done), or cancelled when its
    # run ended first.
    CheckConstraint(
        "reply_to IS NULL OR state IN ('queued', 'done', 'cancelled')", name="reply_states"
    ),
    CheckConstraint("reply_to IS NULL OR send_key IS NULL", name="send_key_only_instructions"),
    CheckConstraint(
        "(state IN ('queued', 'claimed')) = (finished_at IS NULL)",
        name="finished_at_iff_final",
    ),
    CheckConstraint("(error_code IS NULL) = (error_reason IS NULL)", name="error_code_with_reason"),
    CheckConstraint("reply_to IS NOT NULL OR error_code IS NULL", name="errors_only_in_replies"),
    CheckConstraint(
        "reply_to IS NOT NULL OR rejected_reason IS NULL", name="rejections_only_of_replies"
    ),
    CheckConstraint("jsonb_typeof(metrics) = 'object'", name="metrics_is_object"),
    CheckConstraint("jsonb_typeof(configs) = 'object'", name="configs_is_object"),
)
# The claim query's filter and order, exactly: queued instructions of a node, per
# run (for fair round-robin claiming across runs), oldest first.
Index(
    "ix_messages_claim",
    messages.c.dst_node_id,
    messages.c.run_id,
    messages.c.id,
    postgresql_where=text("state = 'queued' AND reply_to IS NULL"),
)
Index(
    "ix_messages_lease",
    messages.c.lease_until,
    postgresql_where=text("state = 'claimed'"),
)
Index(
    "ix_messages_deadline",
    messages.c.deadline,
    postgresql_where=text("state IN ('queued', 'claimed') AND reply_to IS NULL"),
)
Index("ix_messages_run_id", messages.c.run_id, messages.c.id)
Index(
    "ix_messages_send_key",
    messages.c.run_id,
    messages.c.send_key,
    unique=True,
    postgresql_where=text("send_key IS NOT NULL"),
)
