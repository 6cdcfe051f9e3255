"""The strategy contract and the round loop every strategy shares."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator

from flpg.grid import Grid
from flpg.message import Message
from flpg.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.strategy.result import Result

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


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
    """A federated algorithm: configure a round, aggregate its replies, repeat."""

    min_available_nodes: int = 1

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
        Raises NodesUnavailable if `min_available_nodes` are not online in time.
        """
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        checkpoint = grid.load_checkpoint()
        if checkpoint is None:
            result = Result(arrays=initial_arrays)
            first_round = 1
            log(f"starting {type(self).__name__}: {num_rounds} rounds, run {grid.run_id}")
            grid.wait_for_nodes(self.min_available_nodes, timeout)
            if evaluate_fn is not None:
                self._server_evaluate(grid, 0, initial_arrays, evaluate_fn, result)
            # From here on the global model lives in the database, written once per
            # round: messages and checkpoints reference it, memory does not hold it.
            arrays = grid.save_checkpoint(0, initial_arrays, result.metrics_to_json())
            del initial_arrays
        else:
            result = Result.from_checkpoint(checkpoint.arrays, checkpoint.metrics)
            first_round = checkpoint.round + 1
            log(
                f"resuming {type(self).__name__} after round {checkpoint.round} of "
                f"{num_rounds}, run {grid.run_id} attempt {grid.attempt}"
            )
            arrays = checkpoint.arrays
            grid.wait_for_nodes(self.min_available_nodes, timeout)
        result.arrays = arrays
        for server_round in range(first_round, num_rounds + 1):
            started = time.monotonic()
            grid.wait_for_nodes(self.min_available_nodes, timeout)
            config = ConfigRecord(dict(train_config or {}))
            config["server-round"] = server_round
            ids = grid.push_messages(self.configure_train(server_round, arrays, config, grid))
            tally = ReplyTally(grid.receive(ids, timeout=timeout))
            new_arrays, metrics = self.aggregate_train(server_round, tally)
            grid.reject_replies(tally.rejected)
            missing = len(ids) - tally.received
            if missing:
                tally.failures += missing
                tally.reasons.append(f"{missing} node(s) did not reply within {timeout:g} s")
            result.train_metrics_clientapp[server_round] = metrics or MetricRecord()
            saved_metrics = None
            if new_arrays is not None:
                saved_metrics = result.metrics_to_json()
                arrays = grid.save_checkpoint(server_round, new_arrays, saved_metrics)
                result.arrays = arrays
                del new_arrays
            grid.record_round(
                server_round,
                "train",
                metrics,
                num_replies=tally.received - tally.failures + missing,
                num_failures=tally.failures,
            )
            log(
                f"round {server_round}/{num_rounds} train: {len(ids) - tally.failures} ok, "
                f"{tally.failures} failed{_fmt(metrics)} ({time.monotonic() - started:.2f} s)"
            )
            for reason in tally.reasons:
                log(f"round {server_round}/{num_rounds} train failure: {reason}")

            eval_config = ConfigRecord(dict(evaluate_config or {}))
            eval_config["server-round"] = server_round
            eval_messages = list(self.configure_evaluate(server_round, arrays, eval_config, grid))
            if eval_messages:
                ids = grid.push_messages(eval_messages)
                tally = ReplyTally(grid.receive(ids, timeout=timeout))
                eval_metrics = self.aggregate_evaluate(server_round, tally)
                grid.reject_replies(tally.rejected)
                missing = len(ids) - tally.received
                tally.failures += missing
                result.evaluate_metrics_clientapp[server_round] = eval_metrics or MetricRecord()
                grid.record_round(
                    server_round,
                    "evaluate",
                    eval_metrics,
                    num_replies=len(ids) - tally.failures,
                    num_failures=tally.failures,
                )
                log(
                    f"round {server_round}/{num_rounds} evaluate: {len(ids) - tally.failures} ok, "
                    f"{tally.failures} failed{_fmt(eval_metrics)}"
                )
            if evaluate_fn is not None:
                self._server_evaluate(grid, server_round, arrays, evaluate_fn, result)
            round_metrics = result.metrics_to_json()
            if round_metrics != saved_metrics:  # evaluation added metrics, or no new arrays
                arrays = grid.save_checkpoint(server_round, arrays, round_metrics)
                result.arrays = arrays
        result.arrays = arrays
        log(f"finished {num_rounds} rounds")
        return result

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
