"""What apps import from Flower's `flwr.common`: `log`, the array and scalar type
names, the record and message types (the same objects as `flpg.app`'s), DEFAULT_TTL,
`np.save` bytes helpers and `now`. Flower's legacy names (Parameters, FitIns, ...) are
not here: flpg has the Message API only."""

from __future__ import annotations

from flpg.app import (
    DEFAULT_TTL,
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
from flpg.app.typing import ConfigRecordValues, MetricRecordValues
from flpg.common.logger import log
from flpg.common.parameter import array_from_numpy, bytes_to_ndarray, ndarray_to_bytes, now
from flpg.common.typing import Config, Metrics, NDArray, NDArrays, Properties, Scalar

__all__ = [
    "DEFAULT_TTL",
    "Array",
    "ArrayRecord",
    "Config",
    "ConfigRecord",
    "ConfigRecordValues",
    "Context",
    "Error",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "MetricRecordValues",
    "Metrics",
    "NDArray",
    "NDArrays",
    "Properties",
    "RecordDict",
    "Scalar",
    "array_from_numpy",
    "bytes_to_ndarray",
    "log",
    "ndarray_to_bytes",
    "now",
]
