"""FedXgbCyclic: federated XGBoost by passing the booster from node to node, one per
round."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np

from flpg.app.array import Array
from flpg.app.message import Message, MessageType
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected, read_array
from flpg.serverapp.strategy.fedavg import FedAvg, MetricsAggrFn
from flpg.serverapp.strategy.state import StrategyState
from flpg.serverapp.strategy.strategy_utils import log, only_arrays, record_weight
from flpg.serverapp.strategy.xgb_trees import booster_bytes, parse

REGISTERED = "registered_nodes"
"""The state record holding the node order: node ids in the order they joined."""


class FedXgbCyclic(FedAvg):
    """Cyclic XGBoost training: each round one node boosts the global booster further
    and its booster becomes the new global one.

    The nodes take turns in a fixed order: a node gets its place the first time it is
    seen online (the nodes first seen together in a seeded random order, after those
    already placed), and round r goes to the ((r - 1) mod n)-th of the n nodes online
    then, in that order (Flower's rule). Federated evaluation goes to the node that
    trained in the round. The model is passed on as it is: one 1-D uint8 array
    holding the booster's JSON, as in Flower's XGBoost apps (`FedXgbBagging`). The
    order is part of the checkpoint, so a resumed run continues the cycle.

    A reply is rejected (its reason on its row, counted as a failure) when it lacks
    the weight, its ArrayRecord does not hold exactly one 1-D uint8 array, or the
    bytes are not a gbtree booster JSON; the global booster then stays as it was (the
    round fails with TooFewReplies, as any round without its minimum). Given several
    replies, the first usable one becomes the model; metrics are aggregated over all
    usable ones, as FedAvg's are.

    Parameters (Flower's):

    - `fraction_train` (1.0): 1.0 trains (one node per round) and 0.0 skips
      training; anything else is refused (ValueError, as in Flower).
    - `fraction_evaluate` (1.0): the same for federated evaluation. Flower's
      evaluates on one node even at 0.0; flpg skips evaluation.
    - `min_available_nodes` (2): each round waits until this many nodes are online.
      Flower's also waits for two whatever this says.
    - `weighted_by_key` ("num-examples"): the metric each reply must carry; it
      weighs the metrics.
    - `arrayrecord_key` ("arrays"), `configrecord_key` ("config"): where the
      booster and the config go in each instruction (and the booster in each reply).
    - `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn` (None): `(replies' metric
      RecordDicts, weighted_by_key) -> MetricRecord`; None is the weighted mean.
    - `seed` (keyword only; None: the run id): seeds the order given to nodes first
      seen together (flpg's addition; Flower's order is random).

    `min_train_nodes` and `min_evaluate_nodes` are 1 (0 for a skipped phase): a round
    needs the reply of its one node. Flower fixes them at 2, which there only makes
    it wait for two nodes. `registered_nodes` maps node id to place (from 1), as
    Flower's attribute does.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        for name, value in (
            ("fraction_train", fraction_train),
            ("fraction_evaluate", fraction_evaluate),
        ):
            if value not in (0.0, 1.0):
                raise ValueError(f"{name} can only be 1.0 or 0.0 for FedXgbCyclic, got {value}")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            seed=seed,
        )
        self.registered_nodes: dict[int, int] = {}
        self._order: Array | None = None
        """The order as last returned by `state` (the same object while unchanged)."""
        self._order_ids: list[int] = []

    def state(self) -> StrategyState:
        """The node order (`registered_nodes`: node ids as int64, by place)."""
        if not self.registered_nodes:
            return StrategyState()
        ids = sorted(self.registered_nodes, key=self.registered_nodes.__getitem__)
        if self._order is None or self._order_ids != ids:
            self._order, self._order_ids = Array(np.array(ids, dtype=np.int64)), ids
        return StrategyState(arrays={REGISTERED: ArrayRecord({"node_ids": self._order})})

    def load_state(self, state: StrategyState) -> None:
        """Continue the saved node order; ValueError if the state holds no usable one."""
        record = state.arrays.get(REGISTERED)
        if record is None:
            self.registered_nodes, self._order, self._order_ids = {}, None, []
            return
        array = record.get("node_ids")
        if array is None or array.dtype != "int64" or len(array.shape) != 1:
            raise ValueError(f"strategy state {REGISTERED!r} must hold int64 node_ids")
        ids = [int(node) for node in read_array(array)]
        self.registered_nodes = {node: place for place, node in enumerate(ids, start=1)}
        self._order, self._order_ids = array, ids

    def _register(self, node_ids: list[int], draw: str) -> None:
        """Give places to nodes not yet placed, in a random order seeded by `draw`."""
        new = sorted(set(node_ids) - set(self.registered_nodes))
        if not new:
            return
        random.Random(draw).shuffle(new)
        start = max(self.registered_nodes.values(), default=0) + 1
        for place, node in enumerate(new, start=start):
            self.registered_nodes[node] = place

    def _turn(self, grid: Grid, server_round: int, phase: str) -> list[int]:
        """The one node whose turn the round is (none if no node is online)."""
        online = grid.get_node_ids()
        if not online:
            return []
        seed = grid.run_id if self.seed is None else self.seed
        self._register(online, f"{seed}:{server_round}:{phase}:order")
        ordered = sorted(online, key=self.registered_nodes.__getitem__)
        chosen = ordered[(server_round - 1) % len(ordered)]
        log(f"configure_{phase}: Sampled 1 nodes (out of {len(ordered)})")
        return [chosen]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One `train` message, to the node whose turn it is, with the booster and
        `config` (into which it sets `server-round`); none if fraction_train is 0."""
        config["server-round"] = server_round
        if self.fraction_train == 0.0:
            return []
        nodes = self._turn(grid, server_round, "train")
        return self._messages(grid, nodes, arrays, config, MessageType.TRAIN, server_round)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One `evaluate` message, to the node whose turn the round is; none if
        fraction_evaluate is 0."""
        config["server-round"] = server_round
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._turn(grid, server_round, "evaluate")
        return self._messages(grid, nodes, arrays, config, MessageType.EVALUATE, server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The first usable reply's booster as the new model, and the metrics'
        weighted mean; (None, None) if no reply was usable."""
        tally, report = self._tally(replies)
        model: ArrayRecord | None = None
        kept: list[RecordDict] = []
        for reply in tally:
            try:
                record_weight(reply.content, self.weighted_by_key)
                record = only_arrays(reply.content, self.arrayrecord_key)
                if model is None:
                    parse(booster_bytes(record)[1])
            except ReplyRejected as exc:
                tally.reject(reply, str(exc))
                continue
            if model is None:
                model = record
            kept.append(RecordDict(reply.content.metric_records))
        if report:
            self._report("aggregate_train", tally)
        if model is None:
            return None, None
        return model, self.train_metrics_aggr_fn(kept, self.weighted_by_key)
