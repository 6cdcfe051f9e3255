"""The flpg schema, declared once.

These SQLAlchemy tables are the contract every worker shares. Migrations under
`migrations/` must rebuild exactly this metadata (a test proves it); runtime SQL
lives in `sql/` and is executed by `flpg.store`.
"""

from __future__ import annotations

from flpg.models.apps import apps
from flpg.models.base import (
    LOG_STREAM,
    MESSAGE_STATE,
    NODE_STATUS,
    RUN_STATUS,
    metadata,
)
from flpg.models.checkpoints import checkpoint_arrays, checkpoints
from flpg.models.messages import messages
from flpg.models.nodes import nodes
from flpg.models.payloads import (
    array_chunks,
    array_chunks_transient,
    arrays,
    message_arrays,
    transient_marker,
)
from flpg.models.principals import PRINCIPAL_KINDS, principal_nodes, principals, run_roles
from flpg.models.runs import round_metrics, run_logs, run_nodes, runs

__all__ = [
    "LOG_STREAM",
    "MESSAGE_STATE",
    "NODE_STATUS",
    "PRINCIPAL_KINDS",
    "RUN_STATUS",
    "apps",
    "array_chunks",
    "array_chunks_transient",
    "arrays",
    "checkpoint_arrays",
    "checkpoints",
    "message_arrays",
    "messages",
    "metadata",
    "nodes",
    "principal_nodes",
    "principals",
    "round_metrics",
    "run_logs",
    "run_nodes",
    "run_roles",
    "runs",
    "transient_marker",
]
