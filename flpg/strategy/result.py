"""What a strategy's `start` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from flpg.records import ArrayRecord, MetricRecord


@dataclass
class Result:
    """The final global arrays and the aggregated metrics of every round."""

    arrays: ArrayRecord = field(default_factory=ArrayRecord)
    train_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_serverapp: dict[int, MetricRecord] = field(default_factory=dict)
