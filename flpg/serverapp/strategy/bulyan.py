"""Bulyan (El Mhamdi et al., 2018, arxiv.org/abs/1802.07927), chunk-wise."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from flpg.app.records import ArrayRecord, RecordDict
from flpg.serverapp.strategy.fedavg import MetricsAggrFn
from flpg.serverapp.strategy.multikrum import check_malicious, select_and_reduce, select_multikrum
from flpg.serverapp.strategy.robust import Matrix, Reduce, closest_to_median_mean, select_krum
from flpg.serverapp.strategy.robuststrategy import ChunkwiseFedAvg, Round
from flpg.serverapp.strategy.strategy_utils import log

SelectionRule = Callable[[list[RecordDict], int, int], list[RecordDict]]


class Bulyan(ChunkwiseFedAvg):
    """Bulyan: with N usable replies and f = `num_malicious_nodes`, select
    theta = N - 2f replies with `selection_rule` (MultiKrum by default), then per
    coordinate average the beta = theta - 2f selected values closest to their median
    (unweighted). A round with fewer than 4f + 3 usable replies is skipped, as in
    Flower: a warning line, no new arrays.

    With the default rule, two chunk-wise passes over the replies, never N models in
    memory: the `(N, N)` squared distances slice by slice, then the median and the
    closest-values mean of the selected replies slice by slice. A reply whose values
    or stored bytes fail while being read is rejected and the selection made without
    it. The result keeps each array's dtype (integers rounded); the training metrics
    are the weighted mean over the selected replies, as in Flower.

    Parameters: FedAvg's (`fraction_train`, `fraction_evaluate`, `min_train_nodes`,
    `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key`, `arrayrecord_key`,
    `configrecord_key`, `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, with
    FedAvg's defaults and meaning), and:

    - `num_malicious_nodes` (0): f, the number of Byzantine nodes to tolerate; with
      f > 0, `min_train_nodes` must be at least 4f + 3 (Bulyan's rule, flpg's check;
      Flower accepts fewer).
    - `selection_rule` (None: `select_multikrum`): `(reply contents, f, theta) ->
      the selected contents` (some of those it was given). A rule other than the
      default gets the contents with their arrays still stored: reading them is up
      to the rule (`Array.numpy()` loads one whole).
    - `seed` (None: the run id): node sampling seed (flpg's addition).

    Raises ValueError for a negative f, f > 0 with `min_train_nodes` < 4f + 3, and
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
        selection_rule: SelectionRule | None = None,
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
        check_malicious(num_malicious_nodes, self.min_train_nodes, 4, "Bulyan")
        self.num_malicious_nodes = num_malicious_nodes
        self.selection_rule: SelectionRule = selection_rule or select_multikrum

    def summary(self) -> None:
        """Log f and the selection rule, then FedAvg's lines (Flower's layout)."""
        log("\t├──> Bulyan settings:")
        log(f"\t│\t├── Number of malicious nodes: {self.num_malicious_nodes}")
        log(f"\t│\t└── Selection rule: {getattr(self.selection_rule, '__name__', '?')}")
        super().summary()

    def _enough(self, n: int) -> bool:
        needed = 4 * self.num_malicious_nodes + 3
        if n < needed:
            log(
                "Insufficient replies, skipping Bulyan aggregation: Required at least "
                f"{needed} (4*num_malicious_nodes + 3), but received {n}."
            )
        return n >= needed

    def _aggregate_arrays(
        self, server_round: int, state: Round
    ) -> tuple[ArrayRecord, list[int]] | None:
        f = self.num_malicious_nodes
        if not self._enough(len(state.members)):
            return None

        def reduce_for(selected: list[int]) -> Reduce:
            return closest_to_median_mean(len(selected) - 2 * f)

        if self.selection_rule is select_multikrum:

            def pick(members: list[int], distances: Matrix) -> list[int] | None:
                if not self._enough(len(members)):
                    return None
                positions = select_krum(distances, f, len(members) - 2 * f)
                return [members[p] for p in positions]

            return select_and_reduce(state, pick, reduce_for)
        return self._custom(state)

    def _custom(self, state: Round) -> tuple[ArrayRecord, list[int]] | None:
        """Select with the user's rule (on the contents), then one chunk-wise pass."""
        f = self.num_malicious_nodes
        while self._enough(len(state.members)):
            members = list(state.members)
            contents = [state.kept[m].reply.content for m in members]
            chosen = self.selection_rule(contents, f, len(members) - 2 * f)
            by_id = {id(content): m for content, m in zip(contents, members, strict=True)}
            if any(id(c) not in by_id for c in chosen) or not chosen:
                raise ValueError("selection_rule must return some of the contents it was given")
            picked = [by_id[id(c)] for c in chosen]
            reduce = closest_to_median_mean(min(len(members) - 4 * f, len(picked)))
            done = state.until_clean(partial(state.engine.reduce, reduce=reduce), picked)
            if done is not None and done[0] == picked:
                return state.arrays(list(done[1])), picked
        return None
