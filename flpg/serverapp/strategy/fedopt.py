"""Adaptive federated optimization (Reddi et al., 2020): the FedOpt base of
FedAdagrad, FedAdam and FedYogi, streaming."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import server_update
from flpg.serverapp.strategy.fedavg import FedAvg, MetricsAggrFn
from flpg.serverapp.strategy.fedavgm import check_rate
from flpg.serverapp.strategy.state import ArrayState, StrategyState
from flpg.serverapp.strategy.strategy import AggregationError
from flpg.serverapp.strategy.strategy_utils import log

SecondMoment = Callable[[npt.NDArray[Any], npt.NDArray[Any]], npt.NDArray[Any]]
"""`(v_{t-1}, delta_t ** 2) -> v_t`, element-wise."""


def check_beta(name: str, value: float) -> None:
    """ValueError unless 0 <= value < 1."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be within [0, 1), got {value}")


class FedOpt(FedAvg):
    """The adaptive server optimizers' base (Reddi et al., 2020, arXiv:2003.00295v5).

    Each round the replies' weighted mean is streamed exactly as FedAvg streams it;
    a subclass then moves the model x (the arrays this round's `configure_train`
    sent) along `delta = mean - x` with first moment `m = beta_1 * m + (1 - beta_1)
    * delta` and its own second moment v (both start at zero):
    `x + step * m / (sqrt(v) + tau)`. FedOpt itself, like Flower's, applies no
    server step: its new model is the mean (FedAvg). The step runs array by array
    in float64; m and v are kept in the model array's float dtype (float64 for
    integer arrays), so memory is the mean, m, v and one array at a time, whatever
    the number of nodes. New arrays keep the model's dtypes (integers rounded).

    Parameters (Flower's names, defaults and meaning):

    - `eta` (0.1): the server-side learning rate; a finite number >= 0.
    - `eta_l` (0.1): the client-side learning rate (logged, not sent: the
      ClientApp picks its own); a finite number >= 0.
    - `beta_1` (0.0): decay of the first moment, within [0, 1).
    - `beta_2` (0.0): decay of the second moment, within [0, 1).
    - `tau` (0.001): added to sqrt(v); the smaller, the more adaptive the step. A
      finite number > 0 (0 would divide zero by zero where an array did not move).
    - FedAvg's parameters, with FedAvg's meaning and defaults (see FedAvg), all
      keyword-only here as in Flower: `fraction_train`, `fraction_evaluate`,
      `min_train_nodes`, `min_evaluate_nodes`, `min_available_nodes`,
      `weighted_by_key`, `arrayrecord_key`, `configrecord_key`,
      `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, and `seed` (flpg's).

    State of a subclass (`state()`, kept across a restart or resume; FedOpt itself
    keeps none): "m_t" (only while `beta_1` > 0; with 0 the first moment is delta
    itself) and "v_t", as ArrayRecords named like the model's arrays, once a round
    has produced them (also the `m_t` and `v_t` attributes). Raises ValueError for
    parameters outside those ranges.
    """

    def __init__(
        self,
        *,
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
        eta: float = 1e-1,
        eta_l: float = 1e-1,
        beta_1: float = 0.0,
        beta_2: float = 0.0,
        tau: float = 1e-3,
        seed: int | None = None,
    ) -> None:
        check_rate("eta", eta)
        check_rate("eta_l", eta_l)
        check_beta("beta_1", beta_1)
        check_beta("beta_2", beta_2)
        if not 0.0 < tau < math.inf:
            raise ValueError(f"tau must be a finite number > 0, got {tau}")
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
        self.current_arrays: ArrayRecord | None = None
        """The arrays the last `configure_train` sent (the model the step starts from)."""
        self.eta = eta
        self.eta_l = eta_l
        self.tau = tau
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self._m = ArrayState()
        self._v = ArrayState()

    @property
    def m_t(self) -> ArrayRecord | None:
        """The first moment after the last round (None before it, or if beta_1 is 0)."""
        return self._m.record

    @property
    def v_t(self) -> ArrayRecord | None:
        """The second moment after the last round (None before the first)."""
        return self._v.record

    def summary(self) -> None:
        """Log eta, eta_l, beta_1, beta_2 and tau, then FedAvg's lines (Flower's lines)."""
        log("\t├──> FedOpt settings:")
        log(f"\t│\t├── eta ({self.eta:.6g}) | eta_l ({self.eta_l:.6g})")
        log(f"\t│\t├── beta_1 ({self.beta_1:.6g}) | beta_2 ({self.beta_2:.6g})")
        log(f"\t│\t└── tau ({self.tau:.6g})")
        super().summary()

    def state(self) -> StrategyState:
        """The moments "m_t" and "v_t" that exist so far."""
        moments = {"m_t": self._m.record, "v_t": self._v.record}
        return StrategyState(arrays={k: r for k, r in moments.items() if r is not None})

    def load_state(self, state: StrategyState) -> None:
        """Continue with the saved moments (stored; read array by array when used)."""
        self._m = ArrayState(state.arrays.get("m_t"))
        self._v = ArrayState(state.arrays.get("v_t"))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training instructions; remembers `arrays` as the step's start."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def _rule(self, server_round: int) -> tuple[SecondMoment, float] | None:
        """A subclass's `(second-moment update, step size of round server_round)`;
        None (FedOpt itself): no server step."""
        del server_round
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's streamed mean and metrics, then the subclass's server step; (None,
        None) if no reply was usable. AggregationError if `configure_train` was not
        called first (the step needs the arrays it sent)."""
        mean, metrics = super().aggregate_train(server_round, replies)
        rule = self._rule(server_round)
        if mean is None or rule is None:
            return mean, metrics
        current = self.current_arrays
        if current is None:
            raise AggregationError(
                f"{type(self).__name__} needs configure_train before aggregate_train"
            )
        second_moment, size = rule
        beta_1, tau = self.beta_1, self.tau
        m_state, v_state = self._m, self._v

        def step(name: str, part: slice, x: npt.NDArray[Any], avg: npt.NDArray[Any]) -> Any:
            delta = avg - x
            first = delta
            if beta_1 > 0.0:
                m_part = m_state.buffer(name, current[name])[part]
                first = beta_1 * m_part + (1.0 - beta_1) * delta
                m_part[...] = first
            v_part = v_state.buffer(name, current[name])[part]
            second = second_moment(v_part.astype(delta.dtype), delta * delta)
            v_part[...] = second
            return x + size * first / (np.sqrt(second) + tau)

        new = server_update(current, mean, step)
        if beta_1 > 0.0:
            m_state.commit(new)
        v_state.commit(new)
        return new, metrics
