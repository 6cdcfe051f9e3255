"""What apps import from Flower's `flwr.common`: `log`, the array and scalar type
names, and the record and message types (the same objects as `flpg.app`'s)."""

from __future__ import annotations

from flpg.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flpg.common.logger import log
from flpg.common.typing import Config, Metrics, NDArray, NDArrays, Properties, Scalar

__all__ = [
    "Array",
    "ArrayRecord",
    "Config",
    "ConfigRecord",
    "Context",
    "Error",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "Metrics",
    "NDArray",
    "NDArrays",
    "Properties",
    "RecordDict",
    "Scalar",
    "log",
]
