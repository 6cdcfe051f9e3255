"""Federated Averaging (McMahan et al., 2017), streaming."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from flpg.app.message import Message, MessageType
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected, WeightedArrayMean, WeightedMetricMean
from flpg.serverapp.strategy.strategy import ReplyTally, Strategy

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]


class FedAvg(Strategy):
    """Weighted average of the nodes' arrays, weighted by `weighted_by_key`.

    Replies are aggregated one at a time as they arrive (memory O(model)). A reply
    that carries an error, lacks the weight, or whose arrays do not match the
    global model (names, shapes, dtypes, finite values) is counted as a failure
    and left out; the round continues with the others, as long as it keeps its
    minimum (below, and the `Strategy` docstring).

    Parameters (Flower's, with Flower's meaning unless said otherwise):

    - `fraction_train` (1.0): the fraction of online selected nodes sampled for
      training each round; never fewer than `min_train_nodes` are sampled (while
      that many are online). 0 skips training and sets `min_train_nodes` to 0.
    - `fraction_evaluate` (1.0): the same for federated evaluation; 0 skips it and
      sets `min_evaluate_nodes` to 0.
    - `min_train_nodes` (2): sample at least this many nodes for training, wait
      for this many to be online first, and (flpg's addition: Flower carries on)
      fail the run with TooFewReplies if fewer training replies were aggregated.
    - `min_evaluate_nodes` (2): the same for federated evaluation.
    - `min_available_nodes` (2): every round waits until this many of the run's
      selected nodes are online (at most `timeout` s of `start`, then
      NodesUnavailable); at least 1.
    - `weighted_by_key` ("num-examples"): the metric each reply must carry; the
      weight of its arrays and metrics.
    - `arrayrecord_key` ("arrays"), `configrecord_key` ("config"): where the
      arrays and the config go in each instruction (and the arrays in each reply).
    - `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn` (None): `(replies'
      metric RecordDicts, weighted_by_key) -> MetricRecord`; None is the weighted mean.
    - `seed` (None: the run id): node sampling depends only on (seed, round,
      phase), so a resumed run samples as the original would (flpg's addition).

    Raises ValueError for a fraction outside [0, 1] or a negative minimum.
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
        seed: int | None = None,
    ) -> None:
        for name, value in (
            ("fraction_train", fraction_train),
            ("fraction_evaluate", fraction_evaluate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        for name, count in (
            ("min_train_nodes", min_train_nodes),
            ("min_evaluate_nodes", min_evaluate_nodes),
            ("min_available_nodes", min_available_nodes),
        ):
            if count < 0:
                raise ValueError(f"{name} must be >= 0, got {count}")
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        # As Flower: a phase that is skipped needs no nodes.
        self.min_train_nodes = min_train_nodes if fraction_train > 0.0 else 0
        self.min_evaluate_nodes = min_evaluate_nodes if fraction_evaluate > 0.0 else 0
        self.min_available_nodes = max(min_available_nodes, 1)
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn
        self.seed = seed
        self._reference: ArrayRecord | None = None

    def _sample(
        self, grid: Grid, server_round: int, phase: str, fraction: float, minimum: int
    ) -> list[int]:
        """Sampled online nodes. The draw depends only on (seed, round, phase), the
        seed defaulting to the run id, so a resumed run samples as the original would."""
        nodes = grid.get_node_ids()
        if fraction <= 0.0 or not nodes:
            return []
        wanted = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        seed = grid.run_id if self.seed is None else self.seed
        rng = random.Random(f"{seed}:{server_round}:{phase}")
        return sorted(rng.sample(nodes, wanted))

    def _messages(
        self,
        grid: Grid,
        node_ids: list[int],
        arrays: ArrayRecord,
        config: ConfigRecord,
        message_type: str,
        server_round: int,
    ) -> list[Message]:
        return [
            grid.create_message(
                RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config}),
                message_type,
                node_id,
                group_id=str(server_round),
            )
            for node_id in node_ids
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One `train` message per sampled node, all carrying the same arrays (stored once)."""
        self._reference = arrays
        node_ids = self._sample(
            grid, server_round, "train", self.fraction_train, self.min_train_nodes
        )
        return self._messages(grid, node_ids, arrays, config, MessageType.TRAIN, server_round)

    def _weight(self, reply: Message) -> tuple[float, MetricRecord]:
        metrics = reply.content.metric_records
        for record in metrics.values():
            if self.weighted_by_key in record:
                value = record[self.weighted_by_key]
                if isinstance(value, (int, float)):
                    return float(value), record
        raise ReplyRejected(f"reply has no numeric metric {self.weighted_by_key!r} to weight it by")

    def aggregate_train(
        self, server_round: int, replies: ReplyTally
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Streamed weighted mean of arrays and metrics; None if no reply was usable."""
        assert self._reference is not None, "configure_train must run first"
        arrays = WeightedArrayMean(self._reference)
        metrics = WeightedMetricMean(self.weighted_by_key)
        kept: list[RecordDict] = []
        for reply in replies:
            try:
                weight, record = self._weight(reply)
                arrays.add(reply.content[self.arrayrecord_key], weight)  # type: ignore[arg-type]
            except (ReplyRejected, KeyError, TypeError) as exc:
                replies.reject(reply, str(exc))
                continue
            metrics.add(record, weight)
            if self.train_metrics_aggr_fn is not None:
                kept.append(
                    RecordDict(
                        {k: v for k, v in reply.content.items() if isinstance(v, MetricRecord)}
                    )
                )
        if not arrays.count:
            return None, None
        if self.train_metrics_aggr_fn is not None:
            return arrays.result(), self.train_metrics_aggr_fn(kept, self.weighted_by_key)
        return arrays.result(), metrics.result()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One `evaluate` message per sampled node (none when fraction_evaluate is 0)."""
        node_ids = self._sample(
            grid, server_round, "evaluate", self.fraction_evaluate, self.min_evaluate_nodes
        )
        return self._messages(grid, node_ids, arrays, config, MessageType.EVALUATE, server_round)

    def aggregate_evaluate(self, server_round: int, replies: ReplyTally) -> MetricRecord | None:
        """Weighted mean of the evaluation metrics; None if no reply was usable."""
        metrics = WeightedMetricMean(self.weighted_by_key)
        kept: list[RecordDict] = []
        for reply in replies:
            try:
                weight, record = self._weight(reply)
            except ReplyRejected as exc:
                replies.reject(reply, str(exc))
                continue
            metrics.add(record, weight)
            kept.append(
                RecordDict({k: v for k, v in reply.content.items() if isinstance(v, MetricRecord)})
            )
        if not kept:
            return None
        if self.evaluate_metrics_aggr_fn is not None:
            return self.evaluate_metrics_aggr_fn(kept, self.weighted_by_key)
        return metrics.result()
