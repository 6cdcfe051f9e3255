"""Shared metadata, naming convention and enum types of the schema."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.dialects.postgresql import ENUM

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

NODE_STATUS = ENUM("online", "offline", name="node_status", metadata=metadata)
"""A node is `online` while any of its workers heart-beats."""

RUN_STATUS = ENUM(
    "pending",
    "starting",
    "running",
    "finished",
    "failed",
    "stopped",
    name="run_status",
    metadata=metadata,
)
"""pending -> starting -> running -> finished | failed | stopped (stopped also from pending
and starting; starting -> pending when the link takes back a run its exec never launched).
docs/reliability.md lists who moves each state on and within what bound."""

MESSAGE_STATE = ENUM(
    "queued",
    "claimed",
    "done",
    "expired",
    "cancelled",
    name="message_state",
    metadata=metadata,
)
"""Instructions: queued -> claimed -> done | expired | cancelled (claimed -> queued when a
lease runs out). Replies: queued (waiting for the ServerApp) -> done (pulled) | cancelled
(the run ended first)."""

LOG_STREAM = ENUM("stdout", "stderr", "event", name="log_stream", metadata=metadata)

TERMINAL_RUN_STATUSES = ("finished", "failed", "stopped")
