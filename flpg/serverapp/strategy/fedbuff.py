"""FedBuff: buffered asynchronous aggregation (Nguyen et al., 2022). Not in Flower."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flpg.app.message import Message, MessageType
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.fedavg import FedAvg, MetricsAggrFn
from flpg.serverapp.strategy.fedbuff_buffer import (
    ModelVersions,
    StalenessBuffer,
    StalenessFn,
    staleness_function,
)
from flpg.serverapp.strategy.result import Result
from flpg.serverapp.strategy.strategy import (
    AggregationError,
    EvaluateFn,
    TooFewReplies,
)
from flpg.serverapp.strategy.strategy_utils import log, only_arrays, record_weight
from flpg.serverapp.strategy.tally import ReplyTally

NODE_RECHECK = 5.0
"""Seconds between two looks for newly online nodes while fewer than `concurrency`
nodes are busy."""


@dataclass(frozen=True)
class _Flight:
    node_id: int
    version: int
    sent_at: float


@dataclass
class _Round:
    """What one server update has gathered so far."""

    buffer: StalenessBuffer
    tally: ReplyTally = field(default_factory=lambda: ReplyTally(()))
    metrics: list[RecordDict] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    failed_nodes: set[int] = field(default_factory=set)


class FedBuff(FedAvg):
    """Buffered asynchronous training: the server keeps `concurrency` nodes busy, each
    training from the global model version it was sent, and updates the model every
    `buffer_size` replies as they arrive; it never waits for the slowest node.

    Each reply's update (its arrays minus the model version its node started from) is
    weighted by its number of examples and by `staleness_fn(tau)`, tau being the
    server versions since that model; every `buffer_size` usable replies the model
    moves by `server_learning_rate * sum(n_i s(tau_i) update_i) / sum(n_i)` (see
    `fedbuff_buffer`), is checkpointed, and the nodes that are free get it at once.
    A node freed by a reply gets the current model right away. One "round" is one
    server update, so `num_rounds`, checkpoints, round records (`train` metrics: the
    replies' aggregated metrics plus `staleness-mean` and `staleness-max`), `Result`
    and resume keep their meaning. A restarted or resumed run continues from its
    checkpoint; the previous attempt's in-flight work is not used.

    Memory: the staleness-weighted sum (float64, twice a float32 model) and, at each
    update, the new model; replies are read chunk by chunk into the sum as they
    arrive, whatever their number. The model versions in-flight nodes started from
    (at most `concurrency` + 1) are kept as stored arrays: their bytes stay in the
    database, carried by the in-flight instructions, and a stale reply's version is
    read chunk by chunk when the reply is buffered.

    Parameters:

    - `buffer_size` (2): usable replies per server update (the paper's K); a node may
      contribute more than once to one update.
    - `concurrency` (None: every online node of the run's selection): nodes kept busy
      training (the paper's concurrency); at most one instruction per node at a time.
    - `server_learning_rate` (1.0): the server step; a finite number > 0.
    - `staleness_fn` ("polynomial"): "constant" (1), "polynomial"
      (`(1 + tau) ** -staleness_exponent`), "hinge" (1 up to `hinge_threshold`, then
      `1 / (hinge_slope * (tau - hinge_threshold) + 1)`), or a callable `tau -> weight`
      (a finite number > 0; anything else fails the run with ValueError).
    - `staleness_exponent` (0.5: FedBuff's `1/sqrt(1 + tau)`), `hinge_slope` (10.0),
      `hinge_threshold` (4).
    - `fraction_evaluate` (0.0), `min_evaluate_nodes` (0): a federated evaluation
      after the last update, as FedAvg samples it; off by default (asynchronous
      training has no round boundary to evaluate at; use `evaluate_fn`).
    - `min_available_nodes` (1), `weighted_by_key`, `arrayrecord_key`,
      `configrecord_key`, `train_metrics_aggr_fn`, `evaluate_metrics_aggr_fn`, `seed`:
      FedAvg's.

    Each training instruction's config gets `server-round` (the update its reply can
    first count towards: current version + 1) and `model-version`; its group id is
    that round. `timeout` of `start` bounds each node's training (a node silent for
    longer is a failure of the update being gathered; a late reply is not used) and
    the waits for nodes. An
    update fails with TooFewReplies if every online node failed it (an error reply, an
    unusable reply or a timeout: such a node is given work again after the update).
    Raises ValueError for a bad parameter.
    """

    def __init__(
        self,
        buffer_size: int = 2,
        concurrency: int | None = None,
        server_learning_rate: float = 1.0,
        staleness_fn: str | StalenessFn = "polynomial",
        staleness_exponent: float = 0.5,
        hinge_slope: float = 10.0,
        hinge_threshold: int = 4,
        fraction_evaluate: float = 0.0,
        min_evaluate_nodes: int = 0,
        min_available_nodes: int = 1,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(f"concurrency must be None or an int >= 1, got {concurrency!r}")
        if not 0.0 < server_learning_rate < math.inf:
            raise ValueError(
                f"server_learning_rate must be a finite number > 0, got {server_learning_rate}"
            )
        self._staleness = (
            staleness_fn
            if callable(staleness_fn)
            else staleness_function(
                staleness_fn,
                exponent=staleness_exponent,
                slope=hinge_slope,
                threshold=hinge_threshold,
            )
        )
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=0,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            seed=seed,
        )
        self.buffer_size = buffer_size
        self.concurrency = concurrency
        self.server_learning_rate = server_learning_rate
        self.staleness_fn = staleness_fn
        self._flights: dict[str, _Flight] = {}
        self._versions: ModelVersions | None = None

    def staleness_weight(self, tau: int) -> float:
        """The weight of a reply `tau` versions stale; ValueError unless it is a finite
        number > 0."""
        weight = float(self._staleness(tau))
        if not 0.0 < weight < math.inf:
            raise ValueError(f"staleness_fn({tau}) gave {weight}; it must be a finite number > 0")
        return weight

    def summary(self) -> None:
        """Log the asynchronous settings, then FedAvg's lines."""
        name = self.staleness_fn if isinstance(self.staleness_fn, str) else "custom"
        log("\t├──> FedBuff settings:")
        log(f"\t│\t├── Buffer size: {self.buffer_size}")
        log(f"\t│\t├── Concurrency: {self.concurrency or 'all online nodes'}")
        log(f"\t│\t├── Server learning rate: {self.server_learning_rate}")
        log(f"\t│\t└── Staleness function: {name}")
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One `train` message to each of up to `concurrency` online nodes (lowest ids
        first), all carrying `arrays` and `config` with `server-round` set; for an app
        that drives rounds itself (`start` dispatches on its own)."""
        self._reference = arrays
        config["server-round"] = server_round
        node_ids = grid.get_node_ids()[: self.concurrency]
        return self._messages(grid, node_ids, arrays, config, MessageType.TRAIN, server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The FedBuff update of replies that all started from the arrays of the last
        `configure_train` (staleness 0): with a server learning rate of 1, FedAvg's
        weighted mean (without a `configure_train`, of the replies alone; with another
        rate, AggregationError). (None, None) if no reply was usable; unusable replies
        are left out as FedAvg leaves them out."""
        reference = self._reference
        if reference is None and self.server_learning_rate != 1.0:
            raise AggregationError("FedBuff needs configure_train before aggregate_train")
        tally, report = self._tally(replies)
        buffer = StalenessBuffer(reference) if reference is not None else None
        kept: list[RecordDict] = []
        for reply in tally:
            try:
                record = only_arrays(reply.content, self.arrayrecord_key)
                if buffer is None:
                    reference = record
                    buffer = StalenessBuffer(record)
                weight = record_weight(reply.content, self.weighted_by_key)
                buffer.add(record, weight, self.staleness_weight(0), None)
            except (ReplyRejected, KeyError, TypeError) as exc:
                tally.reject(reply, str(exc))
                continue
            kept.append(RecordDict(reply.content.metric_records))
        if report:
            self._report("aggregate_train", tally)
        if buffer is None or reference is None or not buffer.count:
            return None, None
        new = buffer.apply(reference, self.server_learning_rate)
        return new, self.train_metrics_aggr_fn(kept, self.weighted_by_key)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run `num_rounds` server updates asynchronously (see the class docstring), with
        `evaluate_fn` after each and the optional federated evaluation after the last.

        Checkpoints, round records, resume and the result are `Strategy.start`'s;
        raises NodesUnavailable if no node is online within `timeout` s when one is
        needed, TooFewReplies as the class docstring says.
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        configs = (train_config, evaluate_config)
        result, first_round = self._begin(
            grid, initial_arrays, (num_rounds, timeout), configs, evaluate_fn
        )
        del initial_arrays
        self._flights = {}
        self._versions = ModelVersions(first_round - 1, result.arrays)
        for server_round in range(first_round, num_rounds + 1):
            rounds = (server_round, num_rounds)
            self._train_update(grid, rounds, result, timeout, train_config)
            if server_round < num_rounds:
                self._dispatch(grid, set(), timeout, train_config)
            if evaluate_fn is not None:
                self._server_evaluate(grid, server_round, result.arrays, evaluate_fn, result)
                if not self._checkpoint_current(result):
                    self._save(grid, server_round, result.arrays, result)
        if self.fraction_evaluate > 0.0 and first_round <= num_rounds:
            self._evaluate_round(grid, (num_rounds, num_rounds), result, timeout, evaluate_config)
            if not self._checkpoint_current(result):
                self._save(grid, num_rounds, result.arrays, result)
        log(f"finished {num_rounds} rounds; {len(self._flights)} reply(ies) in flight left unused")
        self._flights = {}
        self._versions = None
        return result

    def _train_update(
        self,
        grid: Grid,
        rounds: tuple[int, int],
        result: Result,
        timeout: float,
        train_config: ConfigRecord | None,
    ) -> None:
        """Gather `buffer_size` usable replies, apply the update, record and checkpoint
        it (`result.arrays` becomes the new stored model)."""
        server_round = rounds[0]
        versions = self._versions
        assert versions is not None
        started = time.monotonic()
        state = _Round(StalenessBuffer(versions.current))
        while state.buffer.count < self.buffer_size:
            self._dispatch(grid, state.failed_nodes, timeout, train_config)
            if not self._flights:
                self._record(grid, rounds, state, None, "")
                raise TooFewReplies(
                    f"round {server_round}: {state.buffer.count} usable replies of "
                    f"buffer_size={self.buffer_size}, and every online node failed this round"
                )
            reply = self._next_reply(grid, state, timeout)
            if reply is not None:
                self._fold(reply, state)
        new = state.buffer.apply(versions.current, self.server_learning_rate)
        metrics = self.train_metrics_aggr_fn(state.metrics, self.weighted_by_key)
        metrics["staleness-mean"] = sum(state.staleness) / len(state.staleness)
        metrics["staleness-max"] = max(state.staleness)
        self._record(grid, rounds, state, metrics, f" ({time.monotonic() - started:.2f} s)")
        result.train_metrics_clientapp[server_round] = metrics
        self._save(grid, server_round, new, result)
        versions.advance(result.arrays)

    @staticmethod
    def _record(
        grid: Grid, rounds: tuple[int, int], state: _Round, metrics: MetricRecord | None, took: str
    ) -> None:
        """Record an update's rejections, round row and log lines (also a failed one)."""
        (server_round, num_rounds), tally = rounds, state.tally
        grid.reject_replies(tally.rejected)
        ok = state.buffer.count
        grid.record_round(
            server_round, "train", metrics, num_replies=ok, num_failures=tally.failures
        )
        log(
            f"round {server_round}/{num_rounds} train: {ok} ok, {tally.failures} failed, "
            f"staleness {sorted(state.staleness)}{took}"
        )
        for reason in tally.reasons:
            log(f"round {server_round}/{num_rounds} train failure: {reason}")

    def _dispatch(
        self, grid: Grid, skip: set[int], timeout: float, train_config: ConfigRecord | None
    ) -> None:
        """Send the current model to free online nodes (not in `skip`) until
        `concurrency` are busy; waits up to `timeout` s for a node if none is online."""
        versions = self._versions
        assert versions is not None
        online = grid.get_node_ids()
        if not online and not self._flights:
            online = grid.wait_for_nodes(max(self.min_available_nodes, 1), timeout)
        busy = {flight.node_id for flight in self._flights.values()}
        room = len(online) if self.concurrency is None else self.concurrency
        free = [n for n in online if n not in busy and n not in skip]
        chosen = free[: max(room - len(busy), 0)]
        if not chosen:
            return
        server_round = versions.version + 1
        config = ConfigRecord(dict(train_config or {}))
        config["server-round"] = server_round
        config["model-version"] = versions.version
        messages = self._messages(
            grid, chosen, versions.current, config, MessageType.TRAIN, server_round
        )
        now = time.monotonic()
        for message_id, node_id in zip(grid.push_messages(messages), chosen, strict=True):
            self._flights[message_id] = _Flight(node_id, versions.hold(), now)

    def _next_reply(self, grid: Grid, state: _Round, timeout: float) -> Message | None:
        """The next reply to arrive (woken by the grid's LISTEN); None after dropping the
        nodes silent for `timeout` s, or after NODE_RECHECK s with room for more nodes."""
        now = time.monotonic()
        wait = max(min(f.sent_at for f in self._flights.values()) + timeout - now, 0.0)
        if self.concurrency is None or len(self._flights) < self.concurrency:
            wait = min(wait, NODE_RECHECK)
        for reply in grid.receive(list(self._flights), timeout=wait):
            return reply
        now = time.monotonic()
        for message_id, flight in list(self._flights.items()):
            if flight.sent_at + timeout <= now:
                self._land(message_id)
                state.tally.fail(f"node {flight.node_id}: no reply within {timeout:g} s")
                state.failed_nodes.add(flight.node_id)
        return None

    def _land(self, message_id: str) -> _Flight:
        """Forget one flight and give back its model version."""
        flight = self._flights.pop(message_id)
        assert self._versions is not None
        self._versions.release(flight.version)
        return flight

    def _fold(self, reply: Message, state: _Round) -> None:
        """Buffer one reply, weighted by its examples and its staleness, or count why
        it could not be."""
        versions = self._versions
        assert versions is not None
        message_id = reply.metadata.reply_to_message_id
        flight = self._flights[str(message_id)]
        state.tally.received += 1
        try:
            if reply.has_error():
                state.tally.fail(f"node {flight.node_id}: {reply.error.reason}")
                state.failed_nodes.add(flight.node_id)
                return
            tau = versions.version - flight.version
            try:
                record = only_arrays(reply.content, self.arrayrecord_key)
                examples = record_weight(reply.content, self.weighted_by_key)
                base = None if tau == 0 else versions.get(flight.version)
                state.buffer.add(record, examples, self.staleness_weight(tau), base)
            except (ReplyRejected, KeyError, TypeError) as exc:
                state.tally.reject(reply, str(exc))
                state.failed_nodes.add(flight.node_id)
                return
            state.metrics.append(RecordDict(reply.content.metric_records))
            state.staleness.append(tau)
        finally:
            self._land(str(message_id))
