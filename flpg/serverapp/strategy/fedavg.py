"""Federated Averaging (McMahan et al., 2017), streaming."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from flpg.app.message import Message, MessageType
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected, WeightedArrayMean
from flpg.serverapp.strategy.strategy import Strategy
from flpg.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    log,
    only_arrays,
    record_weight,
)
from flpg.serverapp.strategy.tally import ReplyTally

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]


class FedAvg(Strategy):
    """Weighted average of the nodes' arrays, weighted by `weighted_by_key`.

    Replies are aggregated one at a time as they arrive (memory O(model)). A reply
    that carries an error, lacks the weight, or whose arrays do not match the
    global model (names, shapes, dtypes, finite values) is counted as a failure
    and left out; the round continues with the others, as long as it keeps its
    minimum (below, and the `Strategy` docstring). `aggregate_train` and
    `aggregate_evaluate` take the ReplyTally `start` gives them or, as Flower's do,
    any iterable of replies (a list from `grid.send_and_receive`), leaving out error
    replies and unusable ones alike; Flower's raise InconsistentMessageReplies for
    an unusable reply, flpg's aggregate the others.

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
      metric RecordDicts, weighted_by_key) -> MetricRecord`; None is the weighted mean,
      `strategy_utils.aggregate_metricrecords` (the attribute holds it, as in Flower).
      flpg passes each usable reply's MetricRecords only, not its arrays.
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
        self.train_metrics_aggr_fn = train_metrics_aggr_fn or aggregate_metricrecords
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn or aggregate_metricrecords
        self.seed = seed
        self._reference: ArrayRecord | None = None

    def summary(self) -> None:
        """Log the sampling parameters and record keys, in Flower's FedAvg lines."""
        for line in (
            "\t├──> Sampling:",
            f"\t│\t├──Fraction: train ({self.fraction_train:.2f}) | "
            f"evaluate ( {self.fraction_evaluate:.2f})",
            f"\t│\t├──Minimum nodes: train ({self.min_train_nodes}) | "
            f"evaluate ({self.min_evaluate_nodes})",
            f"\t│\t└──Minimum available nodes: {self.min_available_nodes}",
            "\t└──> Keys in records:",
            f"\t\t├── Weighted by: '{self.weighted_by_key}'",
            f"\t\t├── ArrayRecord key: '{self.arrayrecord_key}'",
            f"\t\t└── ConfigRecord key: '{self.configrecord_key}'",
        ):
            log(line)

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
        """One `train` message per sampled node, all carrying the same arrays (stored
        once) and `config`, into which it sets `server-round` (as Flower's does)."""
        self._reference = arrays
        config["server-round"] = server_round
        node_ids = self._sample(
            grid, server_round, "train", self.fraction_train, self.min_train_nodes
        )
        return self._messages(grid, node_ids, arrays, config, MessageType.TRAIN, server_round)

    def _tally(self, replies: Iterable[Message]) -> tuple[ReplyTally, bool]:
        """The replies as a tally, and whether this method's caller logs its outcome:
        `start`'s tally as it is; any other iterable wrapped in a new tally, which
        passes rejections on to the round's tally while `start` aggregates one (it
        logs them) and otherwise is logged by the caller, as Flower logs replies."""
        if isinstance(replies, ReplyTally):
            return replies, False
        return ReplyTally(replies, parent=self._round_tally), self._round_tally is None

    @staticmethod
    def _report(phase: str, tally: ReplyTally) -> None:
        log(f"{phase}: Received {tally.usable} results and {tally.failures} failures")
        for reason in tally.reasons:
            log(f"\t> {reason}")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Streamed weighted mean of arrays and metrics; (None, None) if no reply was
        usable. The arrays must match those of the last `configure_train` (without
        one, the first usable reply's)."""
        tally, report = self._tally(replies)
        reference = self._reference
        arrays = WeightedArrayMean(reference) if reference is not None else None
        kept: list[RecordDict] = []
        for reply in tally:
            try:
                weight = record_weight(reply.content, self.weighted_by_key)
                record = only_arrays(reply.content, self.arrayrecord_key)
                if arrays is None or (reference is None and not arrays.count):
                    arrays = WeightedArrayMean(record)
                arrays.add(record, weight)
            except (ReplyRejected, KeyError, TypeError) as exc:
                tally.reject(reply, str(exc))
                continue
            kept.append(RecordDict(reply.content.metric_records))
        if report:
            self._report("aggregate_train", tally)
        if arrays is None or not arrays.count:
            return None, None
        return arrays.result(), self.train_metrics_aggr_fn(kept, self.weighted_by_key)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One `evaluate` message per sampled node (none when fraction_evaluate is 0),
        each with `config`, into which it sets `server-round` (as Flower's does)."""
        config["server-round"] = server_round
        node_ids = self._sample(
            grid, server_round, "evaluate", self.fraction_evaluate, self.min_evaluate_nodes
        )
        return self._messages(grid, node_ids, arrays, config, MessageType.EVALUATE, server_round)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted mean of the evaluation metrics; None if no reply was usable."""
        tally, report = self._tally(replies)
        kept: list[RecordDict] = []
        for reply in tally:
            try:
                record_weight(reply.content, self.weighted_by_key)
            except ReplyRejected as exc:
                tally.reject(reply, str(exc))
                continue
            kept.append(RecordDict(reply.content.metric_records))
        if report:
            self._report("aggregate_evaluate", tally)
        if not kept:
            return None
        return self.evaluate_metrics_aggr_fn(kept, self.weighted_by_key)
