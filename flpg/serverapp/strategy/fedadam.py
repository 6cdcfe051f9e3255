"""Adaptive federated optimization with Adam (Reddi et al., 2020), streaming."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.serverapp.strategy.fedavg import MetricsAggrFn
from flpg.serverapp.strategy.fedopt import FedOpt, SecondMoment


class FedAdam(FedOpt):
    """FedOpt with Adam's moments (Reddi et al., 2020, arXiv:2003.00295v5).

    Each round t, after FedAvg's streamed mean: `delta = mean - x`, `m = beta_1 * m
    + (1 - beta_1) * delta`, `v = beta_2 * v + (1 - beta_2) * delta**2` (both start
    at zero) and the new model is `x + eta_t * m / (sqrt(v) + tau)` with, as in
    Flower, `eta_t = eta * sqrt(1 - beta_2**(t + 1)) / (1 - beta_1**(t + 1))`. The
    correction depends only on the round, so a resumed run applies the same one.
    Memory and precision as FedOpt.

    Parameters (Flower's names, defaults and meaning):

    - `eta` (0.1): the server-side learning rate; a finite number >= 0.
    - `eta_l` (0.1): the client-side learning rate (logged, not sent); >= 0.
    - `beta_1` (0.9): decay of the first moment, within [0, 1).
    - `beta_2` (0.99): decay of the second moment, within [0, 1).
    - `tau` (0.001): added to sqrt(v), controls the adaptivity; a finite number > 0.
    - FedAvg's parameters, with FedAvg's meaning and defaults (see FedAvg), all
      keyword-only as in Flower: `fraction_train`, `fraction_evaluate`,
      `min_train_nodes`, `min_evaluate_nodes`, `min_available_nodes`,
      `weighted_by_key`, `arrayrecord_key`, `configrecord_key`,
      `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, and `seed` (flpg's).

    State (`state()`, kept across a restart or resume): "m_t" (while beta_1 > 0)
    and "v_t", once a round has produced them. Raises ValueError for parameters
    outside those ranges.
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
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        seed: int | None = None,
    ) -> None:
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
            eta=eta,
            eta_l=eta_l,
            beta_1=beta_1,
            beta_2=beta_2,
            tau=tau,
            seed=seed,
        )

    def _rule(self, server_round: int) -> tuple[SecondMoment, float]:
        """`beta_2 * v + (1 - beta_2) * delta**2`, step eta with Flower's bias correction."""
        beta_1, beta_2 = self.beta_1, self.beta_2

        def second_moment(v: npt.NDArray[Any], squared: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return beta_2 * v + (1.0 - beta_2) * squared

        rounds = server_round + 1.0
        size = self.eta * np.sqrt(1.0 - beta_2**rounds) / (1.0 - beta_1**rounds)
        return second_moment, float(size)
