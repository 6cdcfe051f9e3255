"""App bundles: zipped app directories, content-addressed by SHA-256."""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Column,
    LargeBinary,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP

from flpg.models.base import metadata

apps = Table(
    "apps",
    metadata,
    Column("hash", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("bundle", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("hash ~ '^[0-9a-f]{64}$'", name="hash_is_sha256"),
    CheckConstraint("size = length(bundle)", name="size_matches"),
)

# Bundles are zip files: already compressed.
_EXTERNAL = DDL("ALTER TABLE apps ALTER COLUMN bundle SET STORAGE EXTERNAL")  # type: ignore[no-untyped-call]
event.listen(apps, "after_create", _EXTERNAL)
