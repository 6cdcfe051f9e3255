"""Krum (Blanchard et al., 2017, arxiv.org/abs/1703.02757), chunk-wise."""

from __future__ import annotations

from flpg.serverapp.strategy.fedavg import MetricsAggrFn
from flpg.serverapp.strategy.multikrum import MultiKrum
from flpg.serverapp.strategy.strategy_utils import log


class Krum(MultiKrum):
    """The arrays of the one reply with the lowest Krum score: the sum of its
    squared L2 distances to its `max(1, N - num_malicious_nodes - 2)` nearest
    replies. MultiKrum with `num_nodes_to_select` = 1: two chunk-wise passes (the
    `(N, N)` distances, then the chosen reply's values), never N models in memory.
    The training metrics are the chosen reply's.

    Parameters: FedAvg's (`fraction_train`, `fraction_evaluate`, `min_train_nodes`,
    `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key`, `arrayrecord_key`,
    `configrecord_key`, `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, with
    FedAvg's defaults and meaning), and:

    - `num_malicious_nodes` (0): f, the number of Byzantine nodes to tolerate; with
      f > 0, `min_train_nodes` must be at least 2f + 3 (Krum's rule, flpg's check;
      Flower accepts fewer).
    - `seed` (None: the run id): node sampling seed (flpg's addition).

    Raises ValueError for a negative f, f > 0 with `min_train_nodes` < 2f + 3, and
    as FedAvg does.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        num_malicious_nodes: int = 0,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            num_malicious_nodes=num_malicious_nodes,
            num_nodes_to_select=1,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            seed=seed,
        )

    def summary(self) -> None:
        """Log f, then MultiKrum's lines (Flower's layout)."""
        log("\t├──> Krum settings:")
        log(f"\t│\t└── Number of malicious nodes: {self.num_malicious_nodes}")
        super().summary()
