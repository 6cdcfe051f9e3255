"""No state without a way out: runs.claimed_at, messages.send_key, cancelled replies

- `runs.claimed_at`: when the current attempt was claimed by its exec; a run that is
  `starting` must have one (the link takes back runs `starting` for too long).
- `messages.send_key`: the key a ServerApp chose for an instruction, unique per run,
  so that a send retried after a lost connection finds what its first try committed.
- A reply may be `cancelled`: its run ended before its ServerApp took it.

Rows already stuck are given their way out: `starting` runs get `claimed_at = now()`
(the link takes them back one bound later), and unpulled replies of ended runs are
cancelled.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_REPLY_STATES = "reply_to IS NULL OR state IN ('queued', 'done')"
_NEW_REPLY_STATES = "reply_to IS NULL OR state IN ('queued', 'done', 'cancelled')"


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("claimed_at", postgresql.TIMESTAMP(timezone=True), nullable=True)
    )
    op.execute(
        "UPDATE runs SET claimed_at = CASE WHEN status = 'running'"
        " THEN coalesce(started_at, now()) ELSE now() END"
        " WHERE status IN ('starting', 'running')"
    )
    op.create_check_constraint(
        op.f("ck_runs_starting_has_claimed_at"),
        "runs",
        "status <> 'starting' OR claimed_at IS NOT NULL",
    )
    op.create_index(
        "ix_runs_starting",
        "runs",
        ["claimed_at"],
        unique=False,
        postgresql_where=sa.text("status = 'starting'"),
    )

    op.add_column("messages", sa.Column("send_key", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_messages_send_key_only_instructions"),
        "messages",
        "reply_to IS NULL OR send_key IS NULL",
    )
    op.create_index(
        "ix_messages_send_key",
        "messages",
        ["run_id", "send_key"],
        unique=True,
        postgresql_where=sa.text("send_key IS NOT NULL"),
    )

    op.drop_constraint(op.f("ck_messages_reply_states"), "messages", type_="check")
    op.create_check_constraint(op.f("ck_messages_reply_states"), "messages", _NEW_REPLY_STATES)
    op.execute(
        "UPDATE messages m SET state = 'cancelled', finished_at = now()"
        " FROM runs r"
        " WHERE r.id = m.run_id AND r.status IN ('finished', 'failed', 'stopped')"
        "   AND m.reply_to IS NOT NULL AND m.state = 'queued'"
    )


def downgrade() -> None:
    # Before 0006 a reply was queued or done; a cancelled one is no longer waiting.
    op.execute(
        "UPDATE messages SET state = 'done' WHERE reply_to IS NOT NULL AND state = 'cancelled'"
    )
    op.drop_constraint(op.f("ck_messages_reply_states"), "messages", type_="check")
    op.create_check_constraint(op.f("ck_messages_reply_states"), "messages", _OLD_REPLY_STATES)

    op.drop_index("ix_messages_send_key", table_name="messages")
    op.drop_constraint(op.f("ck_messages_send_key_only_instructions"), "messages", type_="check")
    op.drop_column("messages", "send_key")

    op.drop_index("ix_runs_starting", table_name="runs")
    op.drop_constraint(op.f("ck_runs_starting_has_claimed_at"), "runs", type_="check")
    op.drop_column("runs", "claimed_at")
