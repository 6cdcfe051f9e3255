"""Federated Median (Yin et al., 2018, arxiv.org/abs/1803.01498), chunk-wise."""

from __future__ import annotations

from flpg.app.records import ArrayRecord
from flpg.serverapp.strategy.robust import median
from flpg.serverapp.strategy.robuststrategy import ChunkwiseFedAvg, Round


class FedMedian(ChunkwiseFedAvg):
    """The coordinate-wise median of the nodes' arrays (unweighted; an even count
    takes the mean of the two middle values).

    Aggregated chunk-wise across replies: the same slice of every reply is read
    straight from the stored chunks, its median written into the result, and the
    next slice read; memory is the result plus a few `(N, slice)` float64 matrices,
    never N models (Flower's stacks them all). The result keeps each array's dtype
    (integers rounded). Replies are checked and rejected as FedAvg's are; the
    training metrics are the weighted mean over every usable reply.

    Parameters (Flower's, as in FedAvg):

    - `fraction_train` (1.0), `fraction_evaluate` (1.0): the fraction of online
      selected nodes sampled for training / federated evaluation; 0 skips the phase.
    - `min_train_nodes` (2), `min_evaluate_nodes` (2): sample at least this many
      nodes, wait for them, and fail the run with TooFewReplies below it (flpg).
    - `min_available_nodes` (2): nodes that must be online before each round.
    - `weighted_by_key` ("num-examples"): the metric weighting each reply's metrics
      (every reply must carry it; the median itself is unweighted).
    - `arrayrecord_key` ("arrays"), `configrecord_key` ("config"): where the arrays
      and the config go in each instruction.
    - `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn` (None: the weighted mean):
      `(replies' metric RecordDicts, weighted_by_key) -> MetricRecord`.
    - `seed` (None: the run id): node sampling seed (flpg's addition).

    Raises ValueError for a fraction outside [0, 1] or a negative minimum.
    """

    def summary(self) -> None:
        """Log FedAvg's lines (FedMedian has no parameter of its own)."""
        super().summary()

    def _aggregate_arrays(
        self, server_round: int, state: Round
    ) -> tuple[ArrayRecord, list[int]] | None:
        done = state.until_clean(lambda ms: state.engine.reduce(ms, median), state.members)
        if done is None:
            return None
        members, values = done
        return state.arrays(list(values)), members
