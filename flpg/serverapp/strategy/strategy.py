"""The strategy contract and the round loop every strategy shares."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.errors import FlpgError
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.result import Result
from flpg.serverapp.strategy.state import StateSaver, StrategyState, check_model_names, split
from flpg.serverapp.strategy.strategy_utils import log, log_strategy_start_info
from flpg.serverapp.strategy.tally import ReplyTally

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class TooFewReplies(FlpgError):
    """A round aggregated fewer replies than the strategy's minimum; the run fails."""


class AggregationError(FlpgError):
    """A strategy cannot aggregate as asked (Flower's `flwr.serverapp.exception`
    AggregationError): e.g. `aggregate_train` before the `configure_train` that
    gives it the arrays its server-side update starts from."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Strategy(ABC):
    """A federated algorithm: configure a round, aggregate its replies, repeat.

    The minimums (Flower's names; a subclass sets them, the defaults ask for nothing):
    each round waits until `max(min_available_nodes, min_train_nodes)` of the run's
    selected nodes are online (and `max(min_available_nodes, min_evaluate_nodes)`
    before a federated evaluation that needs any), and fails the run with
    TooFewReplies if its training aggregated fewer than `min_train_nodes` replies or
    its federated evaluation fewer than `min_evaluate_nodes`. A reply counts if it
    arrived in time, carries no error and was not rejected. The failed round's tally
    is recorded (`round_history`) and the checkpoint stays at the round before it, so
    `flpg run --max-restarts` or `flpg resume` retries that round.

    A strategy with state of its own (server momentum, optimizer moments, a clipping
    norm) exposes it through `state` and `load_state`; `start` keeps it in the run's
    checkpoint beside the global model, so a restarted or resumed run continues
    exactly as an uninterrupted one would.
    """

    min_available_nodes: int = 1
    min_train_nodes: int = 0
    min_evaluate_nodes: int = 0
    _round_tally: ReplyTally | None = None
    """The tally of the replies `start` is aggregating, while it aggregates them."""
    _saver: StateSaver | None = None
    """What `start` last checkpointed of the strategy's state."""

    @abstractmethod
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The training instructions of one round."""

    @abstractmethod
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold training replies into new arrays and metrics. `start` passes a
        ReplyTally (error replies already left out, the rest streamed as they
        arrive); a caller of its own may pass any iterable of replies."""

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The federated-evaluation instructions of one round (may be empty)."""

    @abstractmethod
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Fold evaluation replies into metrics (`replies` as for `aggregate_train`)."""

    def summary(self) -> None:
        """Log the strategy's configuration; `start` calls it first. Flower's is
        abstract; flpg's logs nothing, so a strategy need not define it."""
        return None

    def state(self) -> StrategyState:
        """The strategy's state besides the global model, saved with every checkpoint
        (the default: an empty state).

        - Return what a later round needs that the model and the round number do not
          give (momentum, moments, a clipping norm, a counter; see `StrategyState`).
        - `start` calls it for every checkpoint it saves (round 0, right after each
          round's `aggregate_train`, and at the end of a round whose evaluation added
          metrics), maybe more than once per save: keep it cheap and side-effect free.
        - An `Array` object returned again (`is`) must hold the values it held when
          first returned: it is taken as unchanged and linked to its stored bytes,
          not written again (so is a stored array from `load_state` returned as is).
          When values change, return a new `Array` (it may wrap the same ndarray,
          updated in place).
        - A wrapper includes its wrapped strategy's state under names of its own.
        """
        return StrategyState()

    def load_state(self, state: StrategyState) -> None:
        """Continue from `state` (the default ignores it).

        - `start` calls it once, before the first round it runs, whenever it
          continues from a checkpoint (a restarted or resumed run), with the state
          `state()` returned for that checkpoint, even an empty one: the state after
          that round's `aggregate_train`. Never on a fresh run, nor for a checkpoint
          without a state section (saved by an flpg that kept none).
        - Arrays come back with their record and array names, order, dtypes, shapes
          and bytes, stored (`numpy()` reads and keeps one, `Array.source.load()`
          reads a copy); values with their JSON types, in any order.
        - Raise ValueError (one line) if the state cannot be used by this strategy.
        """
        del state

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
        """Run `num_rounds` rounds of train, federated evaluate and server evaluate.

        `timeout` bounds each wait (for nodes, and for each round's replies).
        Every round's aggregated metrics are also stored in the database. The
        global arrays are saved as the run's checkpoint before round 1 (as round 0)
        and as soon as each round's training is aggregated (they are written once
        there, and every message and later checkpoint references those bytes); at
        the end of every round the checkpoint gets all metrics so far (saved again
        only if evaluation added some, or the round produced no new arrays). If the run
        has a checkpoint (it was restarted or resumed), training continues after its
        round from its arrays, and with the strategy's state saved with it (see
        `state` and `load_state`; every checkpoint holds it, in arrays whose names
        start with `state.STATE_PREFIX`, never in the result's arrays). Raises
        ValueError for a model array named with that prefix. The returned result's
        arrays are the global model's only, stored
        (`Array.stored`): `numpy()` reads them.
        Raises NodesUnavailable if the nodes a round needs (see the class docstring)
        are not online in time, and TooFewReplies if a round got fewer replies than
        its minimum (nothing of that round is checkpointed).
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        configs = (train_config, evaluate_config)
        result, first_round = self._begin(
            grid, initial_arrays, (num_rounds, timeout), configs, evaluate_fn
        )
        # From here on the global model lives in the database, written once per
        # round: messages and checkpoints reference it, memory does not hold it.
        del initial_arrays
        for server_round in range(first_round, num_rounds + 1):
            rounds = (server_round, num_rounds)
            saved = self._train_round(grid, rounds, result, timeout, train_config)
            arrays = result.arrays
            self._evaluate_round(grid, rounds, result, timeout, evaluate_config)
            if evaluate_fn is not None:
                self._server_evaluate(grid, server_round, arrays, evaluate_fn, result)
            # Saved again if evaluation added metrics, or training produced no new arrays.
            if not saved or not self._checkpoint_current(result):
                self._save(grid, server_round, arrays, result)
        log(f"finished {num_rounds} rounds")
        return result

    def _begin(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        limits: tuple[int, float],
        configs: tuple[ConfigRecord | None, ConfigRecord | None],
        evaluate_fn: EvaluateFn | None,
    ) -> tuple[Result, int]:
        """The result to continue and the first round to train: from the run's
        checkpoint if it has one, else from `initial_arrays` (server-evaluated as
        round 0 and saved as checkpoint 0). The result's arrays are stored ones.
        Logs a first line, then Flower's start information and `summary()`."""
        num_rounds, timeout = limits
        self._saver = StateSaver()
        checkpoint = grid.load_checkpoint()
        if checkpoint is not None:
            model, state = split(checkpoint.arrays, checkpoint.metrics)
            result = Result.from_checkpoint(model, checkpoint.metrics)
            log(
                f"resuming {type(self).__name__} after round {checkpoint.round} of "
                f"{num_rounds}, run {grid.run_id} attempt {grid.attempt}"
            )
            self._announce(num_rounds, model, configs)
            if state is not None:
                self.load_state(state)
            return result, checkpoint.round + 1
        check_model_names(initial_arrays)
        result = Result(arrays=initial_arrays)
        log(f"starting {type(self).__name__}: {num_rounds} rounds, run {grid.run_id}")
        self._announce(num_rounds, initial_arrays, configs)
        self._wait(grid, self.min_train_nodes, timeout)
        if evaluate_fn is not None:
            self._server_evaluate(grid, 0, initial_arrays, evaluate_fn, result)
        self._save(grid, 0, initial_arrays, result)
        return result, 1

    def _save(self, grid: Grid, server_round: int, arrays: ArrayRecord, result: Result) -> None:
        """Checkpoint `arrays`, every metric of `result` and the strategy's state as
        the run's state after `server_round`; `result.arrays` becomes the stored model."""
        saver = self._saver = self._saver or StateSaver()
        state = self.state()
        content, doc = saver.content(arrays, state, result.metrics_to_json())
        stored = grid.save_checkpoint(server_round, content, doc)
        result.arrays = saver.saved(state, doc, stored)

    def _checkpoint_current(self, result: Result) -> bool:
        """Whether the last checkpoint already holds `result`'s metrics and the state."""
        saver = self._saver
        return saver is not None and saver.unchanged(self.state(), result.metrics_to_json())

    def _announce(
        self,
        num_rounds: int,
        arrays: ArrayRecord,
        configs: tuple[ConfigRecord | None, ConfigRecord | None],
    ) -> None:
        """Flower's start lines: rounds, model size, configs, then `summary()`."""
        log_strategy_start_info(num_rounds, arrays, *configs)
        self.summary()

    def _wait(self, grid: Grid, minimum: int, timeout: float) -> None:
        """Wait for `max(min_available_nodes, minimum)` online nodes (NodesUnavailable)."""
        grid.wait_for_nodes(max(self.min_available_nodes, minimum), timeout)

    def _collect(
        self, grid: Grid, messages: Iterable[Message], timeout: float
    ) -> tuple[list[str], ReplyTally]:
        """Send `messages`; a tally over their replies as they arrive (until `timeout`)."""
        ids = grid.push_messages(messages)
        return ids, ReplyTally(grid.receive(ids, timeout=timeout))

    def _train_round(
        self,
        grid: Grid,
        rounds: tuple[int, int],
        result: Result,
        timeout: float,
        train_config: ConfigRecord | None,
    ) -> bool:
        """Train one round into `result`; whether it checkpointed new arrays (not if
        it produced none). TooFewReplies below `min_train_nodes`."""
        server_round = rounds[0]
        started = time.monotonic()
        self._wait(grid, self.min_train_nodes, timeout)
        messages = self.configure_train(
            server_round, result.arrays, _round_config(train_config, server_round), grid
        )
        ids, tally = self._collect(grid, messages, timeout)
        self._round_tally = tally
        try:
            new_arrays, metrics = self.aggregate_train(server_round, tally)
        finally:
            self._round_tally = None
        took = f" ({time.monotonic() - started:.2f} s)"
        ok = self._conclude(grid, rounds, "train", (ids, tally, metrics), timeout, took)
        self._require(server_round, ok, "training", "min_train_nodes", self.min_train_nodes)
        result.train_metrics_clientapp[server_round] = metrics or MetricRecord()
        if new_arrays is None:
            return False
        self._save(grid, server_round, new_arrays, result)
        return True

    def _evaluate_round(
        self,
        grid: Grid,
        rounds: tuple[int, int],
        result: Result,
        timeout: float,
        evaluate_config: ConfigRecord | None,
    ) -> None:
        """Federated evaluation of one round into `result` (none if the strategy
        configures no messages). TooFewReplies below `min_evaluate_nodes`."""
        server_round = rounds[0]
        if self.min_evaluate_nodes > 0:
            self._wait(grid, self.min_evaluate_nodes, timeout)
        config = _round_config(evaluate_config, server_round)
        messages = list(self.configure_evaluate(server_round, result.arrays, config, grid))
        if messages:
            ids, tally = self._collect(grid, messages, timeout)
            self._round_tally = tally
            try:
                metrics = self.aggregate_evaluate(server_round, tally)
            finally:
                self._round_tally = None
            ok = self._conclude(grid, rounds, "evaluate", (ids, tally, metrics), timeout)
            result.evaluate_metrics_clientapp[server_round] = metrics or MetricRecord()
        else:
            ok = 0
        self._require(server_round, ok, "evaluate", "min_evaluate_nodes", self.min_evaluate_nodes)

    def _conclude(
        self,
        grid: Grid,
        rounds: tuple[int, int],
        phase: str,
        outcome: tuple[list[str], ReplyTally, MetricRecord | None],
        timeout: float,
        took: str = "",
    ) -> int:
        """Record an aggregated phase (rejections, round row, log lines); the number of
        replies that counted."""
        (server_round, num_rounds), (ids, tally, metrics) = rounds, outcome
        grid.reject_replies(tally.rejected)
        ok = self._count(tally, len(ids), timeout)
        grid.record_round(server_round, phase, metrics, num_replies=ok, num_failures=tally.failures)
        log(
            f"round {server_round}/{num_rounds} {phase}: {ok} ok, {tally.failures} failed"
            f"{_fmt(metrics)}{took}"
        )
        for reason in tally.reasons:
            log(f"round {server_round}/{num_rounds} {phase} failure: {reason}")
        return ok

    @staticmethod
    def _count(tally: ReplyTally, sent: int, timeout: float) -> int:
        """Count the replies that never came as failures; returns the aggregated ones."""
        missing = sent - tally.received
        if missing:
            tally.failures += missing
            tally.reasons.append(f"{missing} node(s) did not reply within {timeout:g} s")
        return sent - tally.failures

    @staticmethod
    def _require(server_round: int, ok: int, phase: str, name: str, minimum: int) -> None:
        if ok < minimum:
            raise TooFewReplies(
                f"round {server_round}: {ok} {phase} replies, fewer than {name}={minimum}"
            )

    @staticmethod
    def _server_evaluate(
        grid: Grid, server_round: int, arrays: ArrayRecord, evaluate_fn: EvaluateFn, result: Result
    ) -> None:
        metrics = evaluate_fn(server_round, arrays)
        if metrics is None:
            return
        result.evaluate_metrics_serverapp[server_round] = metrics
        grid.record_round(server_round, "server_evaluate", metrics)
        log(f"round {server_round} server evaluate{_fmt(metrics)}")


def _round_config(config: ConfigRecord | None, server_round: int) -> ConfigRecord:
    """A copy of `config` for one round (the caller's record is never changed) with
    its `server-round`. FedAvg's configure methods set it too, as Flower's do, so a
    strategy that calls them from a `start` of its own sends it; any strategy run by
    this `start` gets it, whether or not its configure methods set it (same value)."""
    out = ConfigRecord(dict(config or {}))
    out["server-round"] = server_round
    return out


def _fmt(metrics: MetricRecord | None) -> str:
    if not metrics:
        return ""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return ", " + ", ".join(parts)
