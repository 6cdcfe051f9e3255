"""Flower's `flwr.serverapp.strategy.strategy_utils`: helpers strategies and apps import.

The names and parameters are Flower's; the arithmetic is flpg's streaming mean
(`aggregate.py`): float arrays summed in float64 and returned in their own dtype
(integer arrays rounded), each reply's weight read from its first MetricRecord
that holds the weighting key. Progress lines go to the ServerApp's stdout, which
lands in the run's log.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import FlpgError
from flpg.serverapp.grid import Grid, NodesUnavailable
from flpg.serverapp.strategy.aggregate import ReplyRejected, WeightedArrayMean, WeightedMetricMean
from flpg.serverapp.strategy.xgb_trees import aggregate_bagging

__all__ = [
    "InconsistentMessageReplies",
    "aggregate_arrayrecords",
    "aggregate_bagging",
    "aggregate_metricrecords",
    "config_to_str",
    "log_strategy_start_info",
    "sample_nodes",
    "validate_message_reply_consistency",
]

NODE_WAIT_STEP = 60.0
"""Seconds `sample_nodes` waits between two "Waiting for nodes" lines."""


class InconsistentMessageReplies(FlpgError):
    """Replies that cannot be aggregated together (Flower's exception of that name,
    which ends the ServerApp; here an ordinary exception: uncaught, the run fails)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def log(message: str) -> None:
    """A progress line on the ServerApp's stdout (which lands in the run's log)."""
    print(message, flush=True)


def config_to_str(config: ConfigRecord) -> str:
    """`{'key': value, ...}` with bytes values shown as `<bytes>`, as Flower prints it."""
    items = (f"'{k}': {'<bytes>' if isinstance(v, bytes) else v}" for k, v in config.items())
    return "{" + ", ".join(items) + "}"


def log_strategy_start_info(
    num_rounds: int,
    arrays: ArrayRecord,
    train_config: ConfigRecord | None,
    evaluate_config: ConfigRecord | None,
) -> None:
    """Log the rounds, the model's size (Flower's count: each array's `data`, in MB;
    a stored array is not read) and both configs, in Flower's lines."""
    megabytes = sum(array.data_nbytes for array in arrays.values()) / 1024**2
    log(f"\t├── Number of rounds: {num_rounds}")
    log(f"\t├── ArrayRecord ({megabytes:.2f} MB)")
    for phase, config in (("train", train_config), ("evaluate", evaluate_config)):
        log(f"\t├── ConfigRecord ({phase}): {config_to_str(config) if config else '(empty!)'}")


def record_weight(content: RecordDict, key: str) -> float:
    """The number under `key` in the first MetricRecord of `content` that holds one;
    ReplyRejected if none does."""
    for record in content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
    raise ReplyRejected(f"reply has no numeric metric {key!r} to weight it by")


def only_arrays(content: RecordDict, key: str | None = None) -> ArrayRecord:
    """The ArrayRecord under `key` if there is one, else the content's only ArrayRecord
    (several are merged name by name, as Flower's aggregation does); ReplyRejected if
    it holds none."""
    named = content.get(key) if key is not None else None
    if isinstance(named, ArrayRecord):
        return named
    found = list(content.array_records.values())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ReplyRejected(f"reply has no ArrayRecord{f' {key!r}' if key else ''}")
    return ArrayRecord({name: array for record in found for name, array in record.items()})


def aggregate_arrayrecords(records: list[RecordDict], weighting_metric_name: str) -> ArrayRecord:
    """The weighted mean of the records' arrays (an empty record for no records).

    Raises ReplyRejected (a ValueError) naming the problem if a record lacks the
    weight or arrays, its arrays differ from the first record's in names, shapes or
    dtypes, or hold NaN/Inf; ValueError if the weights add up to nothing. Unlike
    Flower's, the result keeps each array's dtype (integers rounded).
    """
    if not records:
        return ArrayRecord()
    mean: WeightedArrayMean | None = None
    for content in records:
        weight = record_weight(content, weighting_metric_name)
        arrays = only_arrays(content)
        if mean is None:
            mean = WeightedArrayMean(arrays)
        if weight == 0:
            mean.check(arrays)  # it adds nothing, as a zero weight does in Flower
            continue
        mean.add(arrays, weight)
    assert mean is not None
    return mean.result()


def aggregate_metricrecords(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """The weighted mean of every numeric metric of the records' MetricRecords (lists
    element-wise), the weighting key left out; FedAvg's default metric aggregation.

    A metric some records lack is averaged over those that hold it (Flower's counts
    it as 0 for the others, which its FedAvg never meets: it refuses such replies).
    Records of weight 0 add nothing. ReplyRejected if a record lacks the weight.
    """
    mean = WeightedMetricMean(weighting_metric_name)
    for content in records:
        weight = record_weight(content, weighting_metric_name)
        if weight == 0:
            continue
        for record in content.metric_records.values():
            mean.add(record, weight)
    return mean.result()


def sample_nodes(
    grid: Grid, min_available_nodes: int, sample_size: int
) -> tuple[list[int], list[int]]:
    """`(sample_size node ids drawn at random, all online node ids)`, once at least
    `max(min_available_nodes, sample_size)` of the run's nodes are online (waiting as
    long as it takes, as Flower does, with a line every NODE_WAIT_STEP seconds)."""
    needed = max(min_available_nodes, sample_size)
    online = grid.get_node_ids()
    while len(online) < needed:
        log(f"Waiting for nodes to connect: {len(online)} connected (minimum required: {needed}).")
        try:
            online = grid.wait_for_nodes(needed, NODE_WAIT_STEP)
        except NodesUnavailable:
            online = grid.get_node_ids()
    return random.sample(online, sample_size), online


def validate_message_reply_consistency(
    replies: list[RecordDict], weighted_by_key: str, check_arrayrecord: bool
) -> None:
    """Raise InconsistentMessageReplies unless every reply has exactly one MetricRecord
    (and, with `check_arrayrecord`, one ArrayRecord), all with the first reply's keys,
    the MetricRecords holding `weighted_by_key` as a single number. flpg's FedAvg does
    not call it: it leaves out each reply it cannot use and aggregates the others."""
    if not replies:
        return
    if check_arrayrecord:
        if any(len(reply.array_records) != 1 for reply in replies):
            raise InconsistentMessageReplies("Expected exactly one ArrayRecord in replies.")
        _same_keys(replies, list(replies[0].array_records), "ArrayRecords")
    if any(len(reply.metric_records) != 1 for reply in replies):
        raise InconsistentMessageReplies("Expected exactly one MetricRecord in replies.")
    keys = _same_keys(replies, list(replies[0].metric_records), "MetricRecords")
    if weighted_by_key not in keys:
        raise InconsistentMessageReplies(
            f"Missing required key `{weighted_by_key}` in the MetricRecord of reply messages."
        )
    name = next(iter(replies[0].metric_records))
    if any(isinstance(reply[name].get(weighted_by_key), list) for reply in replies):
        raise InconsistentMessageReplies(
            f"Key `{weighted_by_key}` in the MetricRecord of reply messages must be a single "
            "value (int or float), but a list was found."
        )


def _same_keys(replies: Sequence[RecordDict], names: list[str], what: str) -> set[str]:
    """The keys of the first reply's record `names[0]`; InconsistentMessageReplies
    unless every reply's record of that name has the same keys."""
    first = replies[0][names[0]]
    keys = set(first.keys())
    for reply in replies[1:]:
        record = reply.get(names[0])
        if record is None or set(record.keys()) != keys:
            raise InconsistentMessageReplies(f"All {what} must have the same keys for aggregation.")
    return keys
