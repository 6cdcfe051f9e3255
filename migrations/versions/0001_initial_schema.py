"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from flpg.store.sql import view

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The audit views this revision creates, in dependency order: sql/views/<view>.v1.sql.
VIEWS = ("run_history", "round_history", "message_latency", "node_participation")


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("hash ~ '^[0-9a-f]{64}$'", name=op.f("ck_apps_hash_is_sha256")),
        sa.CheckConstraint("size = length(bundle)", name=op.f("ck_apps_size_matches")),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_apps")),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "node_config",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "labels",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "status",
            postgresql.ENUM("online", "offline", name="node_status"),
            server_default=sa.text("'online'"),
            nullable=False,
        ),
        sa.Column(
            "registered_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_seen_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "jsonb_typeof(labels) = 'object'", name=op.f("ck_nodes_labels_is_object")
        ),
        sa.CheckConstraint(
            "jsonb_typeof(node_config) = 'object'", name=op.f("ck_nodes_node_config_is_object")
        ),
        sa.CheckConstraint("name <> ''", name=op.f("ck_nodes_name_not_empty")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("app_hash", sa.Text(), nullable=False),
        sa.Column("app_name", sa.Text(), nullable=False),
        sa.Column(
            "run_config",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "status",
            postgresql.ENUM(
                "pending", "starting", "running", "finished", "failed", "stopped", name="run_status"
            ),
            server_default=sa.text("'pending'"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "submitted_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("finished_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("exec_id", sa.Text(), nullable=True),
        sa.Column("serverapp_pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("stop_requested_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status IN ('finished', 'failed', 'stopped')) = (finished_at IS NOT NULL)",
            name=op.f("ck_runs_finished_at_iff_terminal"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(run_config) = 'object'", name=op.f("ck_runs_run_config_is_object")
        ),
        sa.CheckConstraint(
            "status <> 'failed' OR reason IS NOT NULL", name=op.f("ck_runs_failed_has_reason")
        ),
        sa.CheckConstraint(
            "status NOT IN ('running', 'finished') OR started_at IS NOT NULL",
            name=op.f("ck_runs_running_has_started_at"),
        ),
        sa.CheckConstraint(
            "status NOT IN ('starting', 'running') OR exec_id IS NOT NULL",
            name=op.f("ck_runs_launched_has_exec"),
        ),
        sa.ForeignKeyConstraint(["app_hash"], ["apps.hash"], name=op.f("fk_runs_app_hash")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(
        "ix_runs_active_exec",
        "runs",
        ["exec_id"],
        unique=False,
        postgresql_where=sa.text("status IN ('starting', 'running')"),
    )
    op.create_index(
        "ix_runs_pending_queue",
        "runs",
        [sa.literal_column("priority DESC"), "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "arrays",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("dtype", sa.Text(), nullable=False),
        sa.Column("shape", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("n_chunks", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("chunk_size > 0", name=op.f("ck_arrays_chunk_size_positive")),
        sa.CheckConstraint("length(digest) = 16", name=op.f("ck_arrays_digest_length")),
        sa.CheckConstraint(
            "n_chunks = (nbytes + chunk_size - 1) / chunk_size",
            name=op.f("ck_arrays_n_chunks_matches"),
        ),
        sa.CheckConstraint("nbytes >= 0", name=op.f("ck_arrays_nbytes_not_negative")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_arrays_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arrays")),
    )
    op.create_index("ix_arrays_run_id", "arrays", ["run_id"], unique=False)
    op.create_table(
        "round_metrics",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("num_replies", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("num_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "recorded_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "jsonb_typeof(metrics) = 'object'", name=op.f("ck_round_metrics_metrics_is_object")
        ),
        sa.CheckConstraint(
            "phase IN ('train', 'evaluate', 'server_evaluate')",
            name=op.f("ck_round_metrics_phase_known"),
        ),
        sa.CheckConstraint("round >= 0", name=op.f("ck_round_metrics_round_not_negative")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_round_metrics_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "round", "phase", name=op.f("pk_round_metrics")),
    )
    op.create_table(
        "run_logs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "ts",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column(
            "stream",
            postgresql.ENUM("stdout", "stderr", "event", name="log_stream"),
            nullable=False,
        ),
        sa.Column("line", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_logs_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_logs")),
    )
    op.create_index("ix_run_logs_run_id_id", "run_logs", ["run_id", "id"], unique=False)
    op.create_table(
        "run_nodes",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("node_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_run_nodes_node_id")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_nodes_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "node_id", name=op.f("pk_run_nodes")),
    )
    op.create_index("ix_run_nodes_node_id", "run_nodes", ["node_id"], unique=False)
    op.create_table(
        "array_chunks",
        sa.Column("array_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_array_chunks_seq_not_negative")),
        sa.ForeignKeyConstraint(
            ["array_id"], ["arrays.id"], name=op.f("fk_array_chunks_array_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("array_id", "seq", name=op.f("pk_array_chunks")),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("src_node_id", sa.BigInteger(), nullable=True),
        sa.Column("dst_node_id", sa.BigInteger(), nullable=True),
        sa.Column("reply_to", sa.BigInteger(), nullable=True),
        sa.Column("group_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("message_type", sa.Text(), nullable=False),
        sa.Column(
            "state",
            postgresql.ENUM(
                "queued", "claimed", "done", "expired", "cancelled", name="message_state"
            ),
            server_default=sa.text("'queued'"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("ttl_seconds", sa.Double(), nullable=False),
        sa.Column("deadline", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claimed_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("lease_until", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("finished_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "configs",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "(state IN ('queued', 'claimed')) = (finished_at IS NULL)",
            name=op.f("ck_messages_finished_at_iff_final"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(configs) = 'object'", name=op.f("ck_messages_configs_is_object")
        ),
        sa.CheckConstraint(
            "jsonb_typeof(metrics) = 'object'", name=op.f("ck_messages_metrics_is_object")
        ),
        sa.CheckConstraint("message_type <> ''", name=op.f("ck_messages_message_type_not_empty")),
        sa.CheckConstraint(
            "reply_to IS NULL OR state IN ('queued', 'done')", name=op.f("ck_messages_reply_states")
        ),
        sa.CheckConstraint(
            "state <> 'claimed' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)",
            name=op.f("ck_messages_claimed_has_lease"),
        ),
        sa.CheckConstraint(
            "(error_code IS NULL) = (error_reason IS NULL)",
            name=op.f("ck_messages_error_code_with_reason"),
        ),
        sa.CheckConstraint(
            "(reply_to IS NULL AND src_node_id IS NULL AND dst_node_id IS NOT NULL) OR (reply_to IS NOT NULL AND dst_node_id IS NULL AND src_node_id IS NOT NULL)",
            name=op.f("ck_messages_direction"),
        ),
        sa.CheckConstraint(
            "reply_to IS NOT NULL OR error_code IS NULL",
            name=op.f("ck_messages_errors_only_in_replies"),
        ),
        sa.CheckConstraint("ttl_seconds > 0", name=op.f("ck_messages_ttl_positive")),
        sa.ForeignKeyConstraint(
            ["reply_to"], ["messages.id"], name=op.f("fk_messages_reply_to"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id", "dst_node_id"],
            ["run_nodes.run_id", "run_nodes.node_id"],
            name="fk_messages_dst_in_selection",
        ),
        sa.ForeignKeyConstraint(
            ["run_id", "src_node_id"],
            ["run_nodes.run_id", "run_nodes.node_id"],
            name="fk_messages_src_in_selection",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_messages_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("reply_to", name=op.f("uq_messages_reply_to")),
    )
    op.create_index(
        "ix_messages_claim",
        "messages",
        ["dst_node_id", "run_id", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'queued' AND reply_to IS NULL"),
    )
    op.create_index(
        "ix_messages_deadline",
        "messages",
        ["deadline"],
        unique=False,
        postgresql_where=sa.text("state IN ('queued', 'claimed') AND reply_to IS NULL"),
    )
    op.create_index(
        "ix_messages_lease",
        "messages",
        ["lease_until"],
        unique=False,
        postgresql_where=sa.text("state = 'claimed'"),
    )
    op.create_index("ix_messages_run_id", "messages", ["run_id", "id"], unique=False)
    op.create_table(
        "message_arrays",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("record_name", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("array_name", sa.Text(), nullable=False),
        sa.Column("array_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("position >= 0", name=op.f("ck_message_arrays_position_not_negative")),
        sa.ForeignKeyConstraint(
            ["array_id"],
            ["arrays.id"],
            name=op.f("fk_message_arrays_array_id"),
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_arrays_message_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "message_id", "record_name", "position", name=op.f("pk_message_arrays")
        ),
        sa.UniqueConstraint(
            "message_id",
            "record_name",
            "array_name",
            name=op.f("uq_message_arrays_message_id_record_name_array_name"),
        ),
    )
    op.create_index("ix_message_arrays_array_id", "message_arrays", ["array_id"], unique=False)
    op.execute("ALTER TABLE apps ALTER COLUMN bundle SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE array_chunks ALTER COLUMN data SET STORAGE EXTERNAL")
    for name in VIEWS:
        op.execute(view(name, 1))


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_message_arrays_array_id", table_name="message_arrays")
    op.drop_table("message_arrays")
    op.drop_index("ix_messages_run_id", table_name="messages")
    op.drop_index(
        "ix_messages_lease", table_name="messages", postgresql_where=sa.text("state = 'claimed'")
    )
    op.drop_index(
        "ix_messages_deadline",
        table_name="messages",
        postgresql_where=sa.text("state IN ('queued', 'claimed') AND reply_to IS NULL"),
    )
    op.drop_index(
        "ix_messages_claim",
        table_name="messages",
        postgresql_where=sa.text("state = 'queued' AND reply_to IS NULL"),
    )
    op.drop_table("messages")
    op.drop_table("array_chunks")
    op.drop_index("ix_run_nodes_node_id", table_name="run_nodes")
    op.drop_table("run_nodes")
    op.drop_index("ix_run_logs_run_id_id", table_name="run_logs")
    op.drop_table("run_logs")
    op.drop_table("round_metrics")
    op.drop_index("ix_arrays_run_id", table_name="arrays")
    op.drop_table("arrays")
    op.drop_index(
        "ix_runs_pending_queue", table_name="runs", postgresql_where=sa.text("status = 'pending'")
    )
    op.drop_index(
        "ix_runs_active_exec",
        table_name="runs",
        postgresql_where=sa.text("status IN ('starting', 'running')"),
    )
    op.drop_table("runs")
    op.drop_table("nodes")
    op.drop_table("apps")
    for enum in ("log_stream", "message_state", "run_status", "node_status"):
        op.execute(f"DROP TYPE IF EXISTS {enum}")
