"""Adaptive federated optimization with Adagrad (Reddi et al., 2020), streaming."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from flpg.serverapp.strategy.fedavg import MetricsAggrFn
from flpg.serverapp.strategy.fedopt import FedOpt, SecondMoment


class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's second moment (Reddi et al., 2020, arXiv:2003.00295v5).

    Each round, after FedAvg's streamed mean: `delta = mean - x`, `v = v + delta**2`
    (v starts at zero) and the new model is `x + eta * delta / (sqrt(v) + tau)` (the
    first moment is delta itself: beta_1 is 0). Memory and precision as FedOpt.

    Parameters (Flower's names, defaults and meaning):

    - `eta` (0.1): the server-side learning rate; a finite number >= 0.
    - `eta_l` (0.1): the client-side learning rate (logged, not sent); >= 0.
    - `tau` (0.001): added to sqrt(v), controls the adaptivity; a finite number > 0.
    - FedAvg's parameters, with FedAvg's meaning and defaults (see FedAvg), all
      keyword-only as in Flower: `fraction_train`, `fraction_evaluate`,
      `min_train_nodes`, `min_evaluate_nodes`, `min_available_nodes`,
      `weighted_by_key`, `arrayrecord_key`, `configrecord_key`,
      `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, and `seed` (flpg's).

    State (`state()`, kept across a restart or resume): "v_t", once a round has
    produced it. Raises ValueError for parameters outside those ranges.
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
            beta_1=0.0,
            beta_2=0.0,
            tau=tau,
            seed=seed,
        )

    def _rule(self, server_round: int) -> tuple[SecondMoment, float]:
        """`v + delta**2`, step eta."""
        del server_round
        return _accumulate, self.eta


def _accumulate(v: npt.NDArray[Any], squared: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out: npt.NDArray[Any] = v + squared
    return out
