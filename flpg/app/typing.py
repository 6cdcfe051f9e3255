"""The value types of records under Flower's names (`flwr.app.typing`)."""

from __future__ import annotations

from typing import TypeAlias

from flpg.app.records import ConfigScalar, ConfigValue, MetricScalar, MetricValue

__all__ = [
    "ConfigRecordValues",
    "ConfigScalar",
    "ConfigScalarList",
    "MetricRecordValues",
    "MetricScalar",
    "MetricScalarList",
]

MetricScalarList: TypeAlias = list[int] | list[float]
MetricRecordValues: TypeAlias = MetricValue
ConfigScalarList: TypeAlias = list[int] | list[float] | list[str] | list[bool] | list[bytes]
ConfigRecordValues: TypeAlias = ConfigValue
