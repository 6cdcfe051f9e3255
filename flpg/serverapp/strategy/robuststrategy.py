"""What the order-statistic and distance strategies share: collecting a round's
replies without reading their arrays, and running chunk-wise passes over them.

Replies are collected one by one (their metadata and stored-array references only),
each checked as FedAvg checks it: the weight metric, then the arrays' names, shapes
and dtypes against the global model (that of the last `configure_train`, without one
the first usable reply's). Values (NaN/Inf) and stored bytes (missing, corrupt) are
checked while the passes read them: a reply that fails is rejected with its reason,
and the pass runs again without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, MetricRecord, RecordDict
from flpg.serverapp.strategy.aggregate import ReplyRejected, WeightedArrayMean
from flpg.serverapp.strategy.fedavg import FedAvg
from flpg.serverapp.strategy.replyslices import ReplySlices
from flpg.serverapp.strategy.robust import DEFAULT_BUDGET, ChunkwiseEngine, RepliesUnusable
from flpg.serverapp.strategy.strategy_utils import only_arrays, record_weight
from flpg.serverapp.strategy.tally import ReplyTally

T = TypeVar("T")


@dataclass(frozen=True)
class Kept:
    """A usable reply: the message, its arrays (not read) and its weight."""

    reply: Message
    arrays: ArrayRecord
    weight: float


class Round:
    """The kept replies of one aggregation and the engine over them (the result in
    `model`'s dtypes); `members` are the positions (into `kept`) not rejected so far."""

    def __init__(
        self, tally: ReplyTally, kept: list[Kept], model: ArrayRecord, budget: int
    ) -> None:
        self.tally = tally
        self.kept = kept
        self.members = list(range(len(kept)))
        spec = [(name, a.dtype, a.shape) for name, a in model.items()]
        self.engine = ChunkwiseEngine(
            spec, ReplySlices([k.arrays for k in kept]).open, budget=budget
        )

    def drop(self, failures: RepliesUnusable) -> None:
        """Reject the replies a pass could not use, with their reasons."""
        for member, reason in failures.failures.items():
            self.tally.reject(self.kept[member].reply, reason)
            self.members.remove(member)

    def until_clean(
        self, compute: Callable[[list[int]], T], members: Sequence[int]
    ) -> tuple[list[int], T] | None:
        """`(members used, compute(members))`, computed again without any reply a pass
        could not use (see `drop`); None if no reply is left."""
        current = list(members)
        while current:
            try:
                return current, compute(current)
            except RepliesUnusable as exc:
                self.drop(exc)
                current = [m for m in current if m not in exc.failures]
        return None

    def arrays(self, values: list[object]) -> ArrayRecord:
        """An ArrayRecord of the model's names holding `values` in order."""
        names = [name for name, _, _ in self.engine.spec]
        return ArrayRecord(dict(zip(names, values, strict=True)))


class ChunkwiseFedAvg(FedAvg):
    """FedAvg whose training aggregation reads every reply at once, slice by slice
    (`robust.ChunkwiseEngine`); subclasses define `_aggregate_arrays`.

    `slice_budget` (class attribute) bounds each slice: coordinates summed over the
    replies (DEFAULT_BUDGET: a 16 MiB float64 matrix).
    """

    slice_budget: int = DEFAULT_BUDGET

    def _keep(self, tally: ReplyTally) -> list[Kept]:
        """The replies that pass FedAvg's checks (the others rejected on `tally`)."""
        kept: list[Kept] = []
        check = WeightedArrayMean(self._reference) if self._reference is not None else None
        for reply in tally:
            try:
                weight = record_weight(reply.content, self.weighted_by_key)
                if not (weight > 0 and math.isfinite(weight)):
                    raise ReplyRejected(f"weight {weight!r} must be a positive number")
                record = only_arrays(reply.content, self.arrayrecord_key)
                if check is None:
                    check = WeightedArrayMean(record)
                check.check(record)
            except (ReplyRejected, KeyError, TypeError) as exc:
                tally.reject(reply, str(exc))
                continue
            kept.append(Kept(reply, record, weight))
        return kept

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's aggregate of the usable replies' arrays and the metrics of
        those it used (all usable ones, or the selected ones); (None, None) if no
        reply was usable or the strategy declined the round. The arrays must match
        those of the last `configure_train` (without one, the first usable reply's)."""
        tally, report = self._tally(replies)
        kept = self._keep(tally)
        arrays: ArrayRecord | None = None
        used: list[int] = []
        if kept:
            model = self._reference if self._reference is not None else kept[0].arrays
            state = Round(tally, kept, model, self.slice_budget)
            outcome = self._aggregate_arrays(server_round, state)
            if outcome is not None:
                arrays, used = outcome
        if report:
            self._report("aggregate_train", tally)
        if arrays is None:
            return None, None
        contents = [RecordDict(kept[m].reply.content.metric_records) for m in used]
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def _aggregate_arrays(
        self, server_round: int, state: Round
    ) -> tuple[ArrayRecord, list[int]] | None:
        """The aggregated arrays and the members whose metrics count; None to skip
        the round (no new arrays)."""
        raise NotImplementedError
