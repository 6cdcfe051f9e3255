"""The values apps exchange, shaped like Flower's `flwr.app`: arrays, records, messages, context."""

from __future__ import annotations

from flpg.app.context import Context
from flpg.app.message import DEFAULT_TTL, Error, ErrorCode, Message, MessageType, Metadata
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.app.typing import (
    ConfigRecordValues,
    ConfigScalar,
    ConfigScalarList,
    MetricRecordValues,
    MetricScalar,
    MetricScalarList,
)
from flpg.app.user_config import UserConfig, UserConfigValue

__all__ = [
    "DEFAULT_TTL",
    "Array",
    "ArrayRecord",
    "ConfigRecord",
    "ConfigRecordValues",
    "ConfigScalar",
    "ConfigScalarList",
    "Context",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "MetricRecordValues",
    "MetricScalar",
    "MetricScalarList",
    "RecordDict",
    "UserConfig",
    "UserConfigValue",
]
