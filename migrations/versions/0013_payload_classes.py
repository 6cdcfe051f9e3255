"""Payload classes: round-transient chunks in the UNLOGGED array_chunks_transient (no
WAL; emptied by a crash, after which the link restarts the runs that lost payloads from
their checkpoints), a crash marker (transient_marker), per-array codec (compressed
updates) and digest algorithm (XXH3-128 from now on; older rows keep sha256-128);
grants and policies in sql/security/trust.v4.sql.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

from flpg.store.migrate import security_sql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "arrays",
        sa.Column("durable", sa.Boolean(), nullable=False, server_default=sa.text("true")),
    )
    op.add_column("arrays", sa.Column("codec", sa.Text(), nullable=True))
    # Existing digests are SHA-256 (truncated); new rows default to XXH3-128.
    op.add_column(
        "arrays",
        sa.Column("digest_alg", sa.Text(), nullable=False, server_default=sa.text("'sha256-128'")),
    )
    op.alter_column("arrays", "digest_alg", server_default=sa.text("'xxh3-128'"))
    op.add_column("arrays", sa.Column("lost_at", TIMESTAMP(timezone=True), nullable=True))
    op.add_column("arrays", sa.Column("base_array_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_arrays_base_array_id"),
        "arrays",
        "arrays",
        ["base_array_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "ix_arrays_base_array_id",
        "arrays",
        ["base_array_id"],
        postgresql_where=sa.text("base_array_id IS NOT NULL"),
    )
    op.create_check_constraint(
        op.f("ck_arrays_base_only_for_topk"),
        "arrays",
        "base_array_id IS NULL OR codec LIKE 'topk:%'",
    )
    op.create_check_constraint(
        op.f("ck_arrays_digest_alg_known"), "arrays", "digest_alg IN ('sha256-128', 'xxh3-128')"
    )
    op.create_check_constraint(
        op.f("ck_arrays_codec_known"),
        "arrays",
        "codec IS NULL OR codec ~ '^(fp16|bf16|int8|topk:[0-9.e+-]+)$'",
    )
    op.create_table(
        "array_chunks_transient",
        sa.Column("array_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_array_chunks_transient_seq_not_negative")),
        sa.ForeignKeyConstraint(
            ["array_id"],
            ["arrays.id"],
            name=op.f("fk_array_chunks_transient_array_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("array_id", "seq", name=op.f("pk_array_chunks_transient")),
        prefixes=["UNLOGGED"],
    )
    op.execute("ALTER TABLE array_chunks_transient ALTER COLUMN data SET STORAGE EXTERNAL")
    op.create_table(
        "transient_marker",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "since", TIMESTAMP(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_transient_marker_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transient_marker")),
        prefixes=["UNLOGGED"],
    )
    op.execute("INSERT INTO transient_marker (id) VALUES (1)")
    op.execute(security_sql("trust.v4"))


def downgrade() -> None:
    op.execute(security_sql("trust.v4.down"))
    op.drop_table("transient_marker")
    op.drop_table("array_chunks_transient")
    op.drop_constraint(op.f("ck_arrays_codec_known"), "arrays")
    op.drop_constraint(op.f("ck_arrays_digest_alg_known"), "arrays")
    op.drop_constraint(op.f("ck_arrays_base_only_for_topk"), "arrays")
    op.drop_index("ix_arrays_base_array_id", table_name="arrays")
    op.drop_constraint(op.f("fk_arrays_base_array_id"), "arrays")
    op.drop_column("arrays", "base_array_id")
    op.drop_column("arrays", "lost_at")
    op.drop_column("arrays", "digest_alg")
    op.drop_column("arrays", "codec")
    op.drop_column("arrays", "durable")
