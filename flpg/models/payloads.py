"""Array payloads: raw bytes in chunked `bytea`, dtype and shape beside them.

An array is written once and referenced by every message that carries it
(`message_arrays`), so a model broadcast to N nodes is stored once. Chunk data
uses STORAGE EXTERNAL: random floats do not compress, so PostgreSQL must not try.
The link deletes the chunks of arrays nothing live needs any more (`collected_at`).

Two durability classes (docs/payloads.md): a checkpoint's arrays keep their chunks in
`array_chunks` (WAL-logged, crash-safe); round-transient payloads (replies, broadcasts no
checkpoint references) keep theirs in the UNLOGGED `array_chunks_transient`, which skips
the WAL and is emptied by a crash. `transient_marker` is an UNLOGGED one-row table: its
row missing means a crash emptied the unlogged tables, and the link recovers.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP

from flpg.models.base import metadata

arrays = Table(
    "arrays",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("dtype", Text, nullable=False),
    Column("shape", ARRAY(BigInteger), nullable=False),
    Column("nbytes", BigInteger, nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("n_chunks", Integer, nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    # Set when the link deleted the chunks (no live message or checkpoint needed them);
    # the row stays, so the audit trail keeps each payload's dtype, shape and digest.
    Column("collected_at", TIMESTAMP(timezone=True)),
    # The role that wrote the row: defaults to, and is forced to, current_user (trigger).
    Column("created_by", Text, nullable=False, server_default=text("CURRENT_USER")),
    # Where the chunks are: array_chunks (true) or array_chunks_transient (false).
    Column("durable", Boolean, nullable=False, server_default=text("true")),
    # NULL: the chunks are the raw bytes; else the codec that encoded each chunk
    # (flpg/app/codecs.py); dtype, shape and nbytes stay those of the decoded array.
    Column("codec", Text),
    # The digest's algorithm (arrays.DIGEST_ALGS); rows written before 0013 are sha256-128.
    Column("digest_alg", Text, nullable=False, server_default=text("'xxh3-128'")),
    # Set (with collected_at) when a crash emptied the transient chunks of this array.
    Column("lost_at", TIMESTAMP(timezone=True)),
    # A top-k reply's base: the array it is a sparse delta against (the model its node
    # received); SET NULL when that array goes (the reply can no longer be decoded).
    Column("base_array_id", BigInteger, ForeignKey("arrays.id", ondelete="SET NULL")),
    CheckConstraint("nbytes >= 0", name="nbytes_not_negative"),
    CheckConstraint("digest_alg IN ('sha256-128', 'xxh3-128')", name="digest_alg_known"),
    CheckConstraint(
        "codec IS NULL OR codec ~ '^(fp16|bf16|int8|topk:[0-9.e+-]+)$'", name="codec_known"
    ),
    CheckConstraint("base_array_id IS NULL OR codec LIKE 'topk:%'", name="base_only_for_topk"),
    CheckConstraint("chunk_size > 0", name="chunk_size_positive"),
    CheckConstraint("n_chunks = (nbytes + chunk_size - 1) / chunk_size", name="n_chunks_matches"),
    CheckConstraint("length(digest) = 16", name="digest_length"),
)
Index("ix_arrays_run_id", arrays.c.run_id)
# The collection sweep looks only at arrays whose chunks are still there.
Index("ix_arrays_uncollected", arrays.c.id, postgresql_where=text("collected_at IS NULL"))
# Collection keeps a base while a top-k reply against it is uncollected.
Index(
    "ix_arrays_base_array_id",
    arrays.c.base_array_id,
    postgresql_where=text("base_array_id IS NOT NULL"),
)


def _chunk_table(name: str, prefixes: list[str]) -> Table:
    """A table of chunk rows (`array_id`, `seq`, `data`), data stored EXTERNAL."""
    table = Table(
        name,
        metadata,
        Column(
            "array_id",
            BigInteger,
            ForeignKey("arrays.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("seq", Integer, primary_key=True),
        Column("data", LargeBinary, nullable=False),
        CheckConstraint("seq >= 0", name="seq_not_negative"),
        prefixes=prefixes,
    )
    event.listen(
        table,
        "after_create",
        DDL(f"ALTER TABLE {name} ALTER COLUMN data SET STORAGE EXTERNAL"),  # type: ignore[no-untyped-call]
    )
    return table


array_chunks = _chunk_table("array_chunks", [])
"""Chunks of durable arrays (a checkpoint's), WAL-logged."""

array_chunks_transient = _chunk_table("array_chunks_transient", ["UNLOGGED"])
"""Chunks of round-transient arrays (replies, uncheckpointed broadcasts): no WAL."""

transient_marker = Table(
    "transient_marker",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("since", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("id = 1", name="one_row"),
    prefixes=["UNLOGGED"],
)

event.listen(
    transient_marker,
    "after_create",
    DDL("INSERT INTO transient_marker (id) VALUES (1)"),  # type: ignore[no-untyped-call]
)

message_arrays = Table(
    "message_arrays",
    metadata,
    Column(
        "message_id",
        BigInteger,
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("record_name", Text, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("array_name", Text, nullable=False),
    # Deferred: deleting a run cascades to its arrays and its messages in one
    # statement, in an order PostgreSQL chooses; the reference is checked at commit.
    Column(
        "array_id",
        BigInteger,
        ForeignKey("arrays.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
    # Who may read the link, copied from its message by a trigger whatever the
    # inserting statement says (sql/security/trust.v3.sql): the message's run, and its
    # node (the destination of an instruction, the source of a reply). Row-level
    # security reads these columns instead of joining the message.
    Column("run_id", BigInteger, nullable=False),
    Column("node_id", BigInteger, nullable=False),
    UniqueConstraint("message_id", "record_name", "array_name"),
    CheckConstraint("position >= 0", name="position_not_negative"),
)
Index("ix_message_arrays_audience", message_arrays.c.array_id, message_arrays.c.node_id)
