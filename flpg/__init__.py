"""flpg: federated learning with the Flower architecture, on PostgreSQL.

The user API mirrors Flower's Message API and module paths (`flpg.app`,
`flpg.serverapp`, `flpg.serverapp.strategy`, `flpg.clientapp`); the names a
Flower app uses most are also importable from `flpg` itself.
"""

from __future__ import annotations

from flpg.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    ErrorCode,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flpg.clientapp import ClientApp
from flpg.serverapp import Grid, ServerApp

__all__ = [
    "Array",
    "ArrayRecord",
    "ClientApp",
    "ConfigRecord",
    "Context",
    "Error",
    "ErrorCode",
    "Grid",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "RecordDict",
    "ServerApp",
]
