"""The words flpg's state lives in: the schema's enum types, the NOTIFY channels and
the constraint names the store translates errors by.

Each StrEnum lists the labels of the PostgreSQL enum type of the same name, in the
same order (`flpg.models.base` declares the types from these classes; a test checks
the migrated database against them). A member is a `str` equal to its label, so it
is passed to and compared with database values as is. The SQL in `sql/` spells the
same labels and channel names as literals; tests check those too.

This module imports nothing but the standard library (the CLI imports it at start-up).
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """pending -> starting -> running -> finished | failed | stopped (stopped also from
    pending and starting; starting -> pending when the link takes back a run its exec
    never launched). docs/reliability.md lists who moves each state on and within what
    bound."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED}
)
"""The run statuses of an ended run."""

STOPPING = "stopping"
"""Not a run status: what a stop request reports for a running run (its ServerApp
is being stopped; the run becomes `stopped` once it is)."""


class MessageState(StrEnum):
    """Instructions: queued -> claimed -> done | expired | cancelled (claimed -> queued
    when a lease runs out). Replies: queued (waiting for the ServerApp) -> done
    (pulled) | cancelled (the run ended first)."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    DONE = "done"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class NodeStatus(StrEnum):
    """A node is `online` while any of its workers heart-beats."""

    ONLINE = "online"
    OFFLINE = "offline"


class LogStream(StrEnum):
    """Where a run's log line came from: its ServerApp's stdout or stderr, or an event
    flpg recorded (launches, ends, restarts)."""

    STDOUT = "stdout"
    STDERR = "stderr"
    EVENT = "event"


EXEC_CHANNEL = "flpg_exec"
"""Wakes exec workers: a run was submitted or a stop was requested (payload: run id)."""


def node_channel(node_id: int) -> str:
    """The channel that wakes the workers of one node (payload: run id)."""
    return f"flpg_node_{node_id}"


def run_channel(run_id: int) -> str:
    """The channel that wakes a run's ServerApp when replies arrive."""
    return f"flpg_run_{run_id}"


def log_channel(run_id: int) -> str:
    """The channel that wakes `flpg log --follow` when a run logs."""
    return f"flpg_log_{run_id}"


# Constraints whose violation the store translates by name; `flpg.models` declares
# them under these names.

MESSAGES_DST_IN_SELECTION = "fk_messages_dst_in_selection"
"""An instruction's destination is in its run's node selection."""

MESSAGES_SRC_IN_SELECTION = "fk_messages_src_in_selection"
"""A reply's source is in its run's node selection."""

SELECTION_FKS = frozenset({MESSAGES_DST_IN_SELECTION, MESSAGES_SRC_IN_SELECTION})
"""A violation of either names a node outside its run's selection (SelectionError)."""
