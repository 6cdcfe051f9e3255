"""What a strategy's `start` returns, and how its metrics survive a restart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flpg.app.records import ArrayRecord, MetricRecord
from flpg.serverapp.strategy.state import model_only
from flpg.store.recordjson import metric_records_from_json, records_to_json

_PHASES = ("train_metrics_clientapp", "evaluate_metrics_clientapp", "evaluate_metrics_serverapp")


@dataclass
class Result:
    """The final global arrays and the aggregated metrics of every round."""

    arrays: ArrayRecord = field(default_factory=ArrayRecord)
    train_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_serverapp: dict[int, MetricRecord] = field(default_factory=dict)

    def metrics_to_json(self) -> dict[str, Any]:
        """Every round's metrics as strict JSON (what a checkpoint stores)."""
        return {
            phase: records_to_json({str(r): m for r, m in getattr(self, phase).items()})
            for phase in _PHASES
        }

    @classmethod
    def from_checkpoint(cls, arrays: ArrayRecord, metrics: dict[str, Any]) -> Result:
        """The result as it stood when the checkpoint was saved: its arrays are the
        global model's, without the strategy state the checkpoint also holds
        (`state.STATE_PREFIX`), and keys of `metrics` other than the phases (the
        state's `state.STATE_KEY`) are ignored."""
        result = cls(arrays=model_only(arrays))
        for phase in _PHASES:
            target: dict[int, MetricRecord] = getattr(result, phase)
            for r, record in metric_records_from_json(metrics.get(phase)).items():
                target[int(r)] = record
        return result
