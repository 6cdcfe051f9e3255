"""Federated Averaging with server momentum (Hsu et al., 2019), streaming."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy.typing as npt

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import server_update
from flpg.serverapp.strategy.fedavg import FedAvg, MetricsAggrFn
from flpg.serverapp.strategy.state import ArrayState, StrategyState
from flpg.serverapp.strategy.strategy import AggregationError
from flpg.serverapp.strategy.strategy_utils import log

MOMENTUM = "momentum_vector"
"""Name of the momentum's ArrayRecord in the strategy state."""


def check_rate(name: str, value: float) -> None:
    """ValueError unless `value` is a finite number >= 0."""
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


class FedAvgM(FedAvg):
    """FedAvg with a server-side SGD step with momentum (Hsu et al., 2019).

    Each round the replies' weighted mean is streamed exactly as FedAvg streams it.
    With server optimization on (`server_momentum != 0` or `server_learning_rate !=
    1`), the pseudo-gradient `g = x - mean` (x: the arrays this round's
    `configure_train` sent) updates the momentum `v = server_momentum * v + g` (v
    starts at zero, so the first round's v is g; without momentum v is just g) and
    the new model is `x - server_learning_rate * v`; off, the mean is the new model.
    The update runs array by array in float64 (the momentum is kept in the model
    array's float dtype, float64 for integer arrays), so memory is the mean, the
    momentum and one array at a time, whatever the number of nodes.

    Parameters (Flower's names, defaults and meaning):

    - `server_learning_rate` (1.0): the server-side learning rate of the SGD step;
      a finite number >= 0.
    - `server_momentum` (0.0): the momentum factor; 0 is plain server SGD. A finite
      number >= 0.
    - FedAvg's parameters, with FedAvg's meaning and defaults (see FedAvg):
      `fraction_train`, `fraction_evaluate`, `min_train_nodes`,
      `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key`,
      `arrayrecord_key`, `configrecord_key`, `train_metrics_aggr_fn`,
      `evaluate_metrics_aggr_fn`, and (keyword only, flpg's addition) `seed`.

    State (`state()`, kept across a restart or resume): the momentum, as the
    ArrayRecord "momentum_vector" (also the `momentum_vector` attribute), once
    a round has produced one. Raises ValueError for a negative or non-finite rate.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        *,
        seed: int | None = None,
    ) -> None:
        check_rate("server_learning_rate", server_learning_rate)
        check_rate("server_momentum", server_momentum)
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            seed=seed,
        )
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.server_opt: bool = server_momentum != 0.0 or server_learning_rate != 1.0
        self.current_arrays: ArrayRecord | None = None
        """The arrays the last `configure_train` sent (the model the update starts from)."""
        self._momentum = ArrayState()

    @property
    def momentum_vector(self) -> ArrayRecord | None:
        """The server momentum after the last round (None before the first)."""
        return self._momentum.record

    def summary(self) -> None:
        """Log the server-optimizer settings, then FedAvg's lines (Flower's lines)."""
        log("\t├──> FedAvgM settings:")
        log(f"\t│\t├── Server optimization: {'ON' if self.server_opt else 'OFF'}")
        log(f"\t│\t├── Server learning rate: {self.server_learning_rate}")
        log(f"\t│\t└── Server Momentum: {self.server_momentum}")
        super().summary()

    def state(self) -> StrategyState:
        """The momentum ("momentum_vector"), once there is one."""
        record = self._momentum.record
        return StrategyState(arrays={} if record is None else {MOMENTUM: record})

    def load_state(self, state: StrategyState) -> None:
        """Continue with the saved momentum (stored; read array by array when used)."""
        self._momentum = ArrayState(state.arrays.get(MOMENTUM))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training instructions; remembers `arrays` as the update's start."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's streamed mean and metrics, then the server step (if on); (None,
        None) if no reply was usable. AggregationError if `configure_train` was not
        called first (the step needs the arrays it sent)."""
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None or not self.server_opt:
            return mean, metrics
        current = self.current_arrays
        if current is None:
            raise AggregationError("FedAvgM needs configure_train before aggregate_train")
        momentum = self._momentum
        factor, rate = self.server_momentum, self.server_learning_rate

        def step(name: str, part: slice, x: npt.NDArray[Any], avg: npt.NDArray[Any]) -> Any:
            gradient = x - avg
            if factor > 0.0:
                velocity = momentum.buffer(name, current[name])[part]
                gradient = factor * velocity + gradient
                velocity[...] = gradient
            return x - rate * gradient

        new = server_update(current, mean, step)
        if factor > 0.0:
            momentum.commit(new)
        return new, metrics
