"""flpg: federated learning with the Flower architecture, on PostgreSQL.

The user API mirrors Flower's Message API, so a Flower app ports by changing imports.
"""

from __future__ import annotations

from flpg.clientapp import ClientApp
from flpg.context import Context
from flpg.grid import Grid
from flpg.message import Error, ErrorCode, Message, MessageType, Metadata
from flpg.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp import ServerApp

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
