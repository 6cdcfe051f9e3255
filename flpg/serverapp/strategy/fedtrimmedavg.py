"""Federated averaging with a trimmed mean (Yin et al., 2018,
arxiv.org/abs/1803.01498), chunk-wise."""

from __future__ import annotations

from flpg.app.records import ArrayRecord
from flpg.serverapp.strategy.fedavg import MetricsAggrFn
from flpg.serverapp.strategy.robust import trimmed_mean
from flpg.serverapp.strategy.robuststrategy import ChunkwiseFedAvg, Round
from flpg.serverapp.strategy.strategy_utils import log


class FedTrimmedAvg(ChunkwiseFedAvg):
    """The coordinate-wise trimmed mean of the nodes' arrays: per coordinate, the
    `int(beta * N)` smallest and as many largest values of the N usable replies are
    cut off and the rest averaged (unweighted, as scipy's `trim_mean`).

    Aggregated chunk-wise across replies, as FedMedian (memory the result plus a few
    `(N, slice)` float64 matrices); the result keeps each array's dtype (integers
    rounded). Replies are checked and rejected as FedAvg's are; the training metrics
    are the weighted mean over every usable reply.

    Parameters: FedAvg's (`fraction_train`, `fraction_evaluate`, `min_train_nodes`,
    `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key`, `arrayrecord_key`,
    `configrecord_key`, `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, with
    FedAvg's defaults and meaning), then:

    - `beta` (0.2): the fraction cut off each tail of every coordinate's values;
      within [0, 0.5) (Flower only fails when the first round finds it too large).
    - `seed` (None: the run id): node sampling seed (flpg's addition).

    Raises ValueError for `beta` outside [0, 0.5), and as FedAvg does.
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
        beta: float = 0.2,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be within [0, 0.5), got {beta}")
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
        self.beta = beta

    def summary(self) -> None:
        """Log `beta`, then FedAvg's lines (Flower's layout)."""
        log("\t├──> FedTrimmedAvg settings:")
        log(f"\t│\t└── beta: {self.beta}")
        super().summary()

    def _aggregate_arrays(
        self, server_round: int, state: Round
    ) -> tuple[ArrayRecord, list[int]] | None:
        reduce = trimmed_mean(self.beta)
        done = state.until_clean(lambda ms: state.engine.reduce(ms, reduce), state.members)
        if done is None:
            return None
        members, values = done
        return state.arrays(list(values)), members
