"""The strategy contract and the round loop every strategy shares."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.errors import FlpgError
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.result import Result

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class TooFewReplies(FlpgError):
    """A round aggregated fewer replies than the strategy's minimum; the run fails."""


class ReplyTally:
    """Wraps a reply stream and counts error replies and rejected replies."""

    def __init__(self, replies: Iterable[Message]) -> None:
        self._replies = replies
        self.received = 0
        self.failures = 0
        self.reasons: list[str] = []
        self.rejected: list[tuple[int, str]] = []
        """`(reply message id, reason)` of replies the strategy could not use."""

    def __iter__(self) -> Iterator[Message]:
        for reply in self._replies:
            self.received += 1
            if reply.has_error():
                self.fail(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                continue
            yield reply

    def fail(self, reason: str) -> None:
        """Count one failed reply and remember why."""
        self.failures += 1
        self.reasons.append(reason)

    def reject(self, reply: Message, reason: str) -> None:
        """Count a reply the strategy cannot use (its reason is stored on its row)."""
        self.fail(
            f"node {reply.metadata.src_node_id}: reply {reply.metadata.message_id} "
            f"rejected: {reason}"
        )
        if reply.metadata.message_id is not None:
            self.rejected.append((reply.metadata.message_id, reason))


def log(message: str) -> None:
    """A progress line on the ServerApp's stdout (which lands in the run's log)."""
    print(message, flush=True)


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
    """

    min_available_nodes: int = 1
    min_train_nodes: int = 0
    min_evaluate_nodes: int = 0

    @abstractmethod
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The training instructions of one round."""

    @abstractmethod
    def aggregate_train(
        self, server_round: int, replies: ReplyTally
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold training replies (streamed) into new arrays and metrics."""

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The federated-evaluation instructions of one round (may be empty)."""

    @abstractmethod
    def aggregate_evaluate(self, server_round: int, replies: ReplyTally) -> MetricRecord | None:
        """Fold evaluation replies (streamed) into metrics."""

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
        round from its arrays. The returned result's arrays are stored
        (`Array.stored`): `numpy()` reads them.
        Raises NodesUnavailable if the nodes a round needs (see the class docstring)
        are not online in time, and TooFewReplies if a round got fewer replies than
        its minimum (nothing of that round is checkpointed).
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        result, first_round = self._begin(grid, initial_arrays, num_rounds, timeout, evaluate_fn)
        # From here on the global model lives in the database, written once per
        # round: messages and checkpoints reference it, memory does not hold it.
        del initial_arrays
        for server_round in range(first_round, num_rounds + 1):
            rounds = (server_round, num_rounds)
            saved_metrics = self._train_round(grid, rounds, result, timeout, train_config)
            arrays = result.arrays
            self._evaluate_round(grid, rounds, result, timeout, evaluate_config)
            if evaluate_fn is not None:
                self._server_evaluate(grid, server_round, arrays, evaluate_fn, result)
            round_metrics = result.metrics_to_json()
            if round_metrics != saved_metrics:  # evaluation added metrics, or no new arrays
                result.arrays = grid.save_checkpoint(server_round, arrays, round_metrics)
        log(f"finished {num_rounds} rounds")
        return result

    def _begin(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int,
        timeout: float,
        evaluate_fn: EvaluateFn | None,
    ) -> tuple[Result, int]:
        """The result to continue and the first round to train: from the run's
        checkpoint if it has one, else from `initial_arrays` (server-evaluated as
        round 0 and saved as checkpoint 0). The result's arrays are stored ones."""
        checkpoint = grid.load_checkpoint()
        if checkpoint is not None:
            result = Result.from_checkpoint(checkpoint.arrays, checkpoint.metrics)
            log(
                f"resuming {type(self).__name__} after round {checkpoint.round} of "
                f"{num_rounds}, run {grid.run_id} attempt {grid.attempt}"
            )
            result.arrays = checkpoint.arrays
            return result, checkpoint.round + 1
        result = Result(arrays=initial_arrays)
        log(f"starting {type(self).__name__}: {num_rounds} rounds, run {grid.run_id}")
        self._wait(grid, self.min_train_nodes, timeout)
        if evaluate_fn is not None:
            self._server_evaluate(grid, 0, initial_arrays, evaluate_fn, result)
        result.arrays = grid.save_checkpoint(0, initial_arrays, result.metrics_to_json())
        return result, 1

    def _wait(self, grid: Grid, minimum: int, timeout: float) -> None:
        """Wait for `max(min_available_nodes, minimum)` online nodes (NodesUnavailable)."""
        grid.wait_for_nodes(max(self.min_available_nodes, minimum), timeout)

    def _collect(
        self, grid: Grid, messages: Iterable[Message], timeout: float
    ) -> tuple[list[int], ReplyTally]:
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
    ) -> dict[str, object] | None:
        """Train one round into `result`; returns the metrics checkpointed with its
        arrays (None if it produced none). TooFewReplies below `min_train_nodes`."""
        server_round = rounds[0]
        started = time.monotonic()
        self._wait(grid, self.min_train_nodes, timeout)
        config = ConfigRecord(dict(train_config or {}))
        config["server-round"] = server_round
        messages = self.configure_train(server_round, result.arrays, config, grid)
        ids, tally = self._collect(grid, messages, timeout)
        new_arrays, metrics = self.aggregate_train(server_round, tally)
        took = f" ({time.monotonic() - started:.2f} s)"
        ok = self._conclude(grid, rounds, "train", (ids, tally, metrics), timeout, took)
        self._require(server_round, ok, "training", "min_train_nodes", self.min_train_nodes)
        result.train_metrics_clientapp[server_round] = metrics or MetricRecord()
        if new_arrays is None:
            return None
        saved_metrics = result.metrics_to_json()
        result.arrays = grid.save_checkpoint(server_round, new_arrays, saved_metrics)
        return saved_metrics

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
        config = ConfigRecord(dict(evaluate_config or {}))
        config["server-round"] = server_round
        messages = list(self.configure_evaluate(server_round, result.arrays, config, grid))
        if messages:
            ids, tally = self._collect(grid, messages, timeout)
            metrics = self.aggregate_evaluate(server_round, tally)
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
        outcome: tuple[list[int], ReplyTally, MetricRecord | None],
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


def _fmt(metrics: MetricRecord | None) -> str:
    if not metrics:
        return ""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return ", " + ", ".join(parts)
