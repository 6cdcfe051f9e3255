"""MultiKrum (Blanchard et al., 2017, arxiv.org/abs/1703.02757), chunk-wise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flpg.app.records import ArrayRecord, RecordDict
from flpg.serverapp.strategy.fedavg import MetricsAggrFn
from flpg.serverapp.strategy.replyslices import ReplySlices
from flpg.serverapp.strategy.robust import (
    ChunkwiseEngine,
    Matrix,
    Reduce,
    RepliesUnusable,
    select_krum,
    weighted_mean,
)
from flpg.serverapp.strategy.robuststrategy import ChunkwiseFedAvg, Round
from flpg.serverapp.strategy.strategy_utils import log, only_arrays

Pick = Callable[[list[int], Matrix], list[int] | None]
"""`(members, their distances) -> the members to aggregate`, None to skip the round."""


class MultiKrum(ChunkwiseFedAvg):
    """The weighted mean of the `num_nodes_to_select` replies with the lowest Krum
    scores; a reply's score is the sum of its squared L2 distances (over the whole
    flattened model) to its `max(1, N - num_malicious_nodes - 2)` nearest replies.

    Two chunk-wise passes over the replies, never N models in memory: the first
    accumulates the `(N, N)` squared distances slice by slice (float64, from centred
    slices), the second takes the weighted mean (`weighted_by_key`) of the selected
    replies slice by slice. A reply whose values or stored bytes fail while being
    read is rejected and the selection made without it. The result keeps each
    array's dtype (integers rounded); the training metrics are the weighted mean
    over the selected replies, as in Flower.

    Parameters: FedAvg's (`fraction_train`, `fraction_evaluate`, `min_train_nodes`,
    `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key`, `arrayrecord_key`,
    `configrecord_key`, `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, with
    FedAvg's defaults and meaning; `weighted_by_key` also weights the final mean), and:

    - `num_malicious_nodes` (0): f, the number of Byzantine nodes to tolerate. Krum's
      rule needs N >= 2f + 3 replies: with f > 0, `min_train_nodes` must be at least
      that (flpg's check; Flower accepts fewer).
    - `num_nodes_to_select` (1): how many lowest-scoring replies are averaged (1 is
      Krum).
    - `seed` (None: the run id): node sampling seed (flpg's addition).

    Raises ValueError for a negative f, `num_nodes_to_select` < 1, f > 0 with
    `min_train_nodes` < 2f + 3, and as FedAvg does.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        num_malicious_nodes: int = 0,
        num_nodes_to_select: int = 1,
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
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            seed=seed,
        )
        if num_nodes_to_select < 1:
            raise ValueError(f"num_nodes_to_select must be >= 1, got {num_nodes_to_select}")
        check_malicious(num_malicious_nodes, self.min_train_nodes, 2, "Krum")
        self.num_malicious_nodes = num_malicious_nodes
        self.num_nodes_to_select = num_nodes_to_select

    def summary(self) -> None:
        """Log f and the number selected, then FedAvg's lines (Flower's layout)."""
        log("\t├──> MultiKrum settings:")
        log(f"\t│\t├── Number of malicious nodes: {self.num_malicious_nodes}")
        log(f"\t│\t└── Number of nodes to select: {self.num_nodes_to_select}")
        super().summary()

    def _aggregate_arrays(
        self, server_round: int, state: Round
    ) -> tuple[ArrayRecord, list[int]] | None:
        f = self.num_malicious_nodes
        if f > 0 and len(state.members) < 2 * f + 3:
            log(f"MultiKrum: {len(state.members)} replies, fewer than 2f+3 = {2 * f + 3}")

        def pick(members: list[int], distances: Matrix) -> list[int]:
            positions = select_krum(distances, f, self.num_nodes_to_select)
            return [members[p] for p in positions]

        def reduce_for(selected: list[int]) -> Reduce:
            return weighted_mean([state.kept[m].weight for m in selected])

        return select_and_reduce(state, pick, reduce_for)


def check_malicious(f: int, min_train_nodes: int, factor: int, rule: str) -> None:
    """ValueError unless f >= 0 and, for f > 0, `min_train_nodes` >= factor*f + 3: a
    strategy that tolerates more Byzantine nodes than its rule allows with the replies
    it waits for fails at construction, before any round (Flower accepts it)."""
    if f < 0:
        raise ValueError(f"num_malicious_nodes must be >= 0, got {f}")
    needed = factor * f + 3
    if f > 0 and min_train_nodes < needed:
        raise ValueError(
            f"{rule} tolerates num_malicious_nodes={f} only with at least {factor}f+3 = "
            f"{needed} replies per round; set min_train_nodes >= {needed} "
            f"(it is {min_train_nodes})"
        )


def select_and_reduce(
    state: Round, pick: Pick, reduce_for: Callable[[list[int]], Reduce]
) -> tuple[ArrayRecord, list[int]] | None:
    """Pass one: the members' distances; `pick` the members to aggregate; pass two:
    `reduce_for(picked)` over them. A picked reply that fails in pass two is
    rejected and the pick made again without it. None if nothing is left or `pick`
    declines."""
    done = state.until_clean(state.engine.distances, state.members)
    if done is None:
        return None
    members, distances = done
    while members:
        picked = pick(members, distances)
        if picked is None:
            return None
        try:
            values = state.engine.reduce(picked, reduce_for(picked))
        except RepliesUnusable as exc:
            state.drop(exc)
            keep = [i for i, m in enumerate(members) if m not in exc.failures]
            members = [members[i] for i in keep]
            distances = distances[np.ix_(keep, keep)]
            continue
        return state.arrays(list(values)), picked
    return None


def select_multikrum(
    contents: list[RecordDict], num_malicious_nodes: int, num_nodes_to_select: int
) -> list[RecordDict]:
    """Flower's selection function: the `num_nodes_to_select` contents with the
    lowest Krum scores (f = `num_malicious_nodes`), lowest first. Their arrays are
    read chunk-wise (twice: never all at once); ValueError if one cannot be read or
    holds NaN/Inf."""
    if not contents:
        return []
    records = [only_arrays(content) for content in contents]
    spec = [(name, a.dtype, a.shape) for name, a in records[0].items()]
    engine = ChunkwiseEngine(spec, ReplySlices(records).open)
    try:
        distances = engine.distances(list(range(len(records))))
    except RepliesUnusable as exc:
        raise ValueError(f"cannot compute Krum distances: {exc}") from exc
    return [contents[i] for i in select_krum(distances, num_malicious_nodes, num_nodes_to_select)]
