"""FedXgbBagging: federated XGBoost by bagging the nodes' trees into one booster."""

from __future__ import annotations

from collections.abc import Iterable

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.fedavg import FedAvg
from flpg.serverapp.strategy.strategy_utils import (
    InconsistentMessageReplies,
    only_arrays,
    record_weight,
)
from flpg.serverapp.strategy.xgb_trees import (
    BoosterError,
    TreeBag,
    booster_array,
    booster_bytes,
    parse,
)


class FedXgbBagging(FedAvg):
    """XGBoost bagging: each round, the trees the nodes grew are appended to the
    global booster.

    The model is one 1-D uint8 array holding the booster's JSON (`Booster.save_raw(
    "json")`; an empty array before the first round), as in Flower's XGBoost apps. A
    node loads it (or starts from scratch on an empty one), boosts locally and replies
    with a booster whose first boosting iteration holds the trees it grew this round
    (Flower's apps reply with the last `num_local_round` iterations). The new global
    booster is the previous one followed by the first iteration of every usable
    reply, one iteration each; when the previous one is empty, the reply of the
    smallest node id is taken whole and the others' first iterations follow. Replies
    are merged in order of node id (then message id), not of arrival, so the booster
    does not depend on timing. No xgboost is needed on the ServerApp: the merge works
    on the JSON (`xgb_trees.py`). Metrics are aggregated as FedAvg's are.

    A reply is rejected (its reason on its row, counted as a failure) when it lacks
    the weight, its ArrayRecord does not hold exactly one 1-D uint8 array, the bytes
    are not a gbtree booster JSON (or are inconsistent), the booster has no boosting
    iteration, or its objective, `num_class`, `num_target` or categorical encodings
    differ from the global booster's. Flower raises or fails on most of these.

    Parameters (FedAvg's, with Flower's meaning; see FedAvg for flpg's additions):

    - `fraction_train` (1.0): the fraction of online selected nodes that train each
      round; never fewer than `min_train_nodes`. 0 skips training.
    - `fraction_evaluate` (1.0): the same for federated evaluation; 0 skips it.
    - `min_train_nodes` (2): sample at least this many nodes for training (and fail
      the run with TooFewReplies if fewer replies were merged).
    - `min_evaluate_nodes` (2): the same for federated evaluation.
    - `min_available_nodes` (2): each round waits until this many nodes are online.
    - `weighted_by_key` ("num-examples"): the metric each reply must carry; it
      weighs the metrics (the trees are not weighted).
    - `arrayrecord_key` ("arrays"), `configrecord_key` ("config"): where the
      booster and the config go in each instruction (and the booster in each reply).
    - `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn` (None): `(replies' metric
      RecordDicts, weighted_by_key) -> MetricRecord`; None is the weighted mean.
    - `seed` (None: the run id): node sampling depends only on (seed, round, phase).

    `current_bst` holds the global booster's bytes (None before `configure_train`).
    `configure_train` raises InconsistentMessageReplies unless the model is exactly
    one array (as Flower's does), and ValueError unless that array is 1-D uint8
    holding nothing or a gbtree booster JSON. Nothing is kept across a resume: the
    checkpointed booster is the whole state.
    """

    current_bst: bytes | None = None
    _bst_name: str = "0"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training instructions; remembers the booster they carry."""
        if len(arrays) != 1:
            raise InconsistentMessageReplies(
                f"FedXgbBagging expects exactly one array (the booster), got {len(arrays)}"
            )
        try:
            name, raw = booster_bytes(arrays)
            if raw:
                parse(raw)
        except BoosterError as exc:
            raise ValueError(f"global model: {exc}") from exc
        self._bst_name, self.current_bst = name, raw
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The global booster with the replies' trees appended, and the metrics'
        weighted mean; (None, None) if no reply was usable. As Flower's: the arrays
        are None (metrics still aggregated) without a `configure_train` first."""
        tally, report = self._tally(replies)
        bag = TreeBag(self.current_bst) if self.current_bst is not None else None
        kept: list[RecordDict] = []
        for reply in tally:
            try:
                record_weight(reply.content, self.weighted_by_key)
                _, raw = booster_bytes(only_arrays(reply.content, self.arrayrecord_key))
                key = (reply.metadata.src_node_id or 0, reply.metadata.message_id or "")
                if bag is None:
                    parse(raw)
                else:
                    bag.add(raw, key)
            except ReplyRejected as exc:
                tally.reject(reply, str(exc))
                continue
            kept.append(RecordDict(reply.content.metric_records))
        if report:
            self._report("aggregate_train", tally)
        if not kept:
            return None, None
        arrays = None
        if bag is not None:
            self.current_bst = bag.result()
            arrays = ArrayRecord({self._bst_name: booster_array(self.current_bst)})
        return arrays, self.train_metrics_aggr_fn(kept, self.weighted_by_key)
