"""q-FedAvg, fair resource allocation (Li et al., 2020), streaming."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import PayloadCorrupt
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import (
    ReplyRejected,
    WeightedArrayMean,
    array_slices,
    cast_into,
    read_array,
    work_dtype,
)
from flpg.serverapp.strategy.fedavg import FedAvg, MetricsAggrFn
from flpg.serverapp.strategy.fedavgm import check_rate
from flpg.serverapp.strategy.strategy import AggregationError
from flpg.serverapp.strategy.strategy_utils import log, only_arrays, record_weight

LOSS_OFFSET = 1e-10
"""Added to each loss before it is raised to a power (a loss of 0 stays usable)."""


def train_loss(content: RecordDict, key: str) -> float:
    """The number under `key` in the first MetricRecord of `content` that holds one;
    ReplyRejected if none does or it is negative or not finite."""
    for record in content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float):
            if not 0.0 <= value < math.inf:
                raise ReplyRejected(f"training loss {key!r} must be finite and >= 0, got {value}")
            return float(value)
    raise ReplyRejected(f"reply has no numeric metric {key!r} (its training loss)")


class _QSum:
    """The running q-FedAvg sums over the replies: `sum_k F_k^q L (x - w_k)` per array
    (float64, or complex128) and `sum_k h_k`, where x is the global model, w_k a
    reply's arrays and F_k its loss. Each reply is read once, chunk by chunk."""

    def __init__(self, current: ArrayRecord, q: float, lipschitz: float) -> None:
        self._current = current
        self._shape = WeightedArrayMean(current)
        self._q, self._lipschitz = q, lipschitz
        self._global: dict[str, npt.NDArray[Any]] = {}
        self._sums: dict[str, npt.NDArray[Any]] = {}
        self.total_h = 0.0
        self.count = 0

    def add(self, record: ArrayRecord, loss: float) -> None:
        """Add one reply. ReplyRejected (the sums as they were) if its arrays do not
        match the model, hold NaN/Inf, or its stored bytes are missing or corrupt."""
        self._shape.check(record)
        if not self._global:
            for name, array in self._current.items():
                self._global[name] = read_array(array).reshape(-1)
                self._sums[name] = np.zeros(math.prod(array.shape), dtype=work_dtype(array.dtype))
        lifted = (loss + LOSS_OFFSET) ** self._q
        weight = self._lipschitz * lifted
        squared = 0.0
        done: list[tuple[str, int]] = []
        try:
            for name in self._global:
                squared += self._add(name, record, weight, done)
        except (ReplyRejected, PayloadCorrupt) as exc:
            for name, limit in done:
                self._add(name, record, -weight, [], limit=limit)
            raise ReplyRejected(str(exc)) from exc
        norm = self._lipschitz**2 * squared  # ||L (x - w_k)||^2
        self.total_h += (
            self._q * (loss + LOSS_OFFSET) ** (self._q - 1) * norm + self._lipschitz * lifted
        )
        self.count += 1

    def _add(
        self,
        name: str,
        record: ArrayRecord,
        weight: float,
        done: list[tuple[str, int]],
        limit: int | None = None,
    ) -> float:
        """Add `weight * (x - w)` of array `name` (its first `limit` elements), keeping
        `done[-1]` at how far it got; the sum of squares of `x - w` added."""
        base, total = self._global[name], self._sums[name]
        complex_ = total.dtype.kind == "c"
        done.append((name, 0))
        squared = 0.0
        for start, values in array_slices(record[name]):
            if limit is not None:
                values = values[: max(limit - start, 0)]
            end = start + values.size
            diff = np.subtract(base[start:end], values, dtype=total.dtype)
            # Not a BLAS dot: its thread pool makes small calls slow on a busy machine.
            part = float((diff.real**2 + diff.imag**2 if complex_ else diff * diff).sum())
            if limit is None and not math.isfinite(part):
                raise ReplyRejected(f"array {name!r} holds NaN or Inf values")
            total[start:end] += weight * diff
            squared += part
            done[-1] = (name, end)
            if limit is not None and end >= limit:
                break
        return squared

    def result(self) -> ArrayRecord:
        """`x - sum_k delta_k / sum_k h_k` in the model's dtypes (integers rounded);
        frees the sums as it goes. Call it once, after at least one `add`."""
        out = ArrayRecord()
        for name, array in self._current.items():
            values = np.empty(array.shape, dtype=np.dtype(array.dtype))
            total = self._sums.pop(name)
            total /= -self.total_h
            total += self._global.pop(name)
            cast_into(total, values.reshape(-1))
            del total
            out[name] = values
        return out


class QFedAvg(FedAvg):
    """q-FedAvg (Li et al., 2020, "Fair Resource Allocation in Federated Learning").

    With L = 1 / client_learning_rate, x the arrays this round's `configure_train`
    sent, and for each usable reply k its arrays w_k and training loss F_k
    (+1e-10): `delta_k = F_k^q * L (x - w_k)`, `h_k = q F_k^(q-1) ||L (x - w_k)||^2
    + L F_k^q`, and the new model is `x - sum_k delta_k / sum_k h_k` (Flower's
    formula; unweighted by `weighted_by_key`, which weighs only the metrics).
    Replies are read once each, chunk by chunk, into float64 sums: memory is the
    model, twice its size for the sums, and one chunk, whatever the number of nodes.
    A reply without the loss (or with a negative one), without the weight, or
    whose arrays do not match the model is left out as FedAvg leaves one out.

    Parameters (Flower's names, order, defaults and meaning):

    - `client_learning_rate` (required): the nodes' local learning rate; its
      inverse estimates the Lipschitz constant L. A finite number > 0.
    - `q` (0.1): how much fairness; 0 gives every reply the same weight (the plain
      mean), larger values favour nodes with a higher loss. A finite number >= 0.
    - `train_loss_key` ("train_loss"): the metric of each training reply that
      holds its training loss.
    - FedAvg's parameters, with FedAvg's meaning and defaults (see FedAvg):
      `fraction_train`, `fraction_evaluate`, `min_train_nodes`,
      `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key` (weighs the
      metrics only), `arrayrecord_key`, `configrecord_key`,
      `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, and (keyword only,
      flpg's addition) `seed`.

    No state: each round starts from the global model alone. Raises ValueError for
    parameters outside those ranges.
    """

    def __init__(
        self,
        client_learning_rate: float,
        q: float = 0.1,
        train_loss_key: str = "train_loss",
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
        *,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < client_learning_rate < math.inf:
            raise ValueError(
                f"client_learning_rate must be a finite number > 0, got {client_learning_rate}"
            )
        check_rate("q", q)
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
        self.q = q
        self.client_learning_rate = client_learning_rate
        self.train_loss_key = train_loss_key
        self.current_arrays: ArrayRecord | None = None
        """The arrays the last `configure_train` sent (x of the formula)."""

    def summary(self) -> None:
        """Log client_learning_rate, q and train_loss_key, then FedAvg's lines."""
        log("\t├──> q-FedAvg settings:")
        log(f"\t│\t├── client_learning_rate: {self.client_learning_rate}")
        log(f"\t│\t├── q: {self.q}")
        log(f"\t│\t└── train_loss_key: '{self.train_loss_key}'")
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training instructions; remembers `arrays` as x."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The q-FedAvg model from the replies, streamed, and their metrics (FedAvg's
        weighted mean); (None, None) if no reply was usable. AggregationError if
        `configure_train` was not called first (x is the arrays it sent)."""
        current = self.current_arrays
        if current is None:
            raise AggregationError("QFedAvg needs configure_train before aggregate_train")
        tally, report = self._tally(replies)
        sums = _QSum(current, self.q, 1.0 / self.client_learning_rate)
        kept: list[RecordDict] = []
        for reply in tally:
            try:
                record_weight(reply.content, self.weighted_by_key)
                loss = train_loss(reply.content, self.train_loss_key)
                sums.add(only_arrays(reply.content, self.arrayrecord_key), loss)
            except (ReplyRejected, KeyError, TypeError) as exc:
                tally.reject(reply, str(exc))
                continue
            kept.append(RecordDict(reply.content.metric_records))
        if report:
            self._report("aggregate_train", tally)
        if not sums.count:
            return None, None
        return sums.result(), self.train_metrics_aggr_fn(kept, self.weighted_by_key)
