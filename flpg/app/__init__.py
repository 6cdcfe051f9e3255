"""The values apps exchange, shaped like Flower's `flwr.app`: arrays, records, messages, context."""

from __future__ import annotations

from flpg.app.context import Context
from flpg.app.message import Error, ErrorCode, Message, MessageType, Metadata
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

__all__ = [
    "Array",
    "ArrayRecord",
    "ConfigRecord",
    "Context",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "RecordDict",
]
