"""What the differential-privacy wrappers share: delegation to the wrapped strategy,
the stream of training replies they pass on, the noise, and the state.

A wrapper is itself a Strategy (`start` runs it): its node minimums, evaluation and
state are the wrapped strategy's; it changes only how training replies reach the
wrapped strategy's `aggregate_train` (one at a time, as they arrive: clipped, or
checked for a norm bit) and the aggregate that comes back (Gaussian noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from flpg.app.message import Message
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.dp_clipping import NormalSource, add_gaussian_noise, compute_stdv
from flpg.serverapp.strategy.state import StateValue, StrategyState
from flpg.serverapp.strategy.strategy import Strategy
from flpg.serverapp.strategy.strategy_utils import log
from flpg.serverapp.strategy.tally import ReplyTally

__all__ = ["DifferentialPrivacyWrapper", "ReplyFeed", "number"]

INNER = "strategy."
"""Prefix of the wrapped strategy's record and value names in the wrapper's state."""

DISCREPANCY = (
    "The number of clients returning parameters ({}) differs from the number of "
    "sampled clients ({}). This could impact the differential privacy guarantees, "
    "potentially leading to privacy leakage or inadequate noise calibration."
)
"""Flower's warning when a round's usable replies are not `num_sampled_clients`."""


def number(name: str, value: object) -> float:
    """`value` as a float; TypeError unless it is a finite int or float (not bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class ReplyFeed:
    """The training replies a wrapper passes on, one at a time, from a ReplyTally.

    Each usable reply goes through `prepare` (which clips it, or checks it, and
    raises ReplyRejected for one it cannot use: the reply is rejected on the tally).
    Once an error reply has come (Flower skips the aggregation of such a round),
    nothing more is passed on. `drain` consumes what the wrapped strategy left,
    without preparing it, so that every error is counted.
    """

    def __init__(self, tally: ReplyTally, prepare: Callable[[Message], Message]) -> None:
        self._tally = tally
        self._replies = iter(tally)
        self._prepare = prepare
        self._draining = False
        self.pulled = 0
        self.passed = 0

    @property
    def errors(self) -> int:
        """Error replies among those received so far."""
        return self._tally.received - self.pulled

    def __iter__(self) -> Iterator[Message]:
        for reply in self._replies:
            self.pulled += 1
            if self._draining or self.errors:
                continue
            try:
                prepared = self._prepare(reply)
            except ReplyRejected as exc:
                self._tally.reject(reply, str(exc))
                continue
            self.passed += 1
            yield prepared

    def drain(self) -> None:
        """Consume the rest of the replies without passing them on."""
        self._draining = True
        for _ in self:
            pass


class DifferentialPrivacyWrapper(Strategy):
    """A strategy that wraps `strategy` and adds Gaussian noise to its aggregate
    (`noise_multiplier * clipping_norm / num_sampled_clients`, Flower's stddev).

    Node minimums, `configure_evaluate`, `aggregate_evaluate` and `summary` are the
    wrapped strategy's. `seed` (flpg's addition): None draws the noise from numpy's
    global random state, as Flower does; an int draws round r's noise from
    `np.random.default_rng([seed, r])`, so a resumed run repeats it (whoever knows
    the seed can remove the noise: keep it secret, or leave it None).
    """

    clipping_norm: float

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        seed: int | None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy, got {type(strategy).__name__}")
        if isinstance(num_sampled_clients, bool) or not isinstance(num_sampled_clients, int):
            raise TypeError(f"num_sampled_clients must be an int, got {num_sampled_clients!r}")
        if number("noise_multiplier", noise_multiplier) < 0:
            raise ValueError("The noise multiplier should be a non-negative value.")
        if num_sampled_clients <= 0:
            raise ValueError("The number of sampled clients should be a positive value.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.strategy = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.num_sampled_clients = num_sampled_clients
        self.seed = seed

    # -- the wrapped strategy's minimums -------------------------------------------

    @property
    def min_available_nodes(self) -> int:
        return self.strategy.min_available_nodes

    @min_available_nodes.setter
    def min_available_nodes(self, value: int) -> None:
        self.strategy.min_available_nodes = value

    @property
    def min_train_nodes(self) -> int:
        return self.strategy.min_train_nodes

    @min_train_nodes.setter
    def min_train_nodes(self, value: int) -> None:
        self.strategy.min_train_nodes = value

    @property
    def min_evaluate_nodes(self) -> int:
        return self.strategy.min_evaluate_nodes

    @min_evaluate_nodes.setter
    def min_evaluate_nodes(self, value: int) -> None:
        self.strategy.min_evaluate_nodes = value

    # -- delegation -----------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation instructions."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The wrapped strategy's evaluation metrics."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the DP settings in Flower's lines, then the wrapped strategy's summary."""
        log("\t├──> DP settings:")
        for line in self._settings():
            log(line)
        self.strategy.summary()

    def _settings(self) -> list[str]:
        return [
            f"\t│\t├── Noise multiplier: {self.noise_multiplier}",
            f"\t│\t└── Clipping norm: {self.clipping_norm}",
        ]

    # -- training replies -----------------------------------------------------------

    def _feed_inner(
        self, server_round: int, replies: Iterable[Message], prepare: Callable[[Message], Message]
    ) -> tuple[tuple[ArrayRecord | None, MetricRecord | None], ReplyFeed] | None:
        """Pass the usable replies, prepared, to the wrapped `aggregate_train`; its
        result and the feed, or None (logged) if an error reply came, in which case
        the wrapped strategy's state is put back as it was (Flower skips the round)."""
        if isinstance(replies, ReplyTally):
            tally, report = replies, False
        else:
            tally, report = ReplyTally(replies, parent=self._round_tally), self._round_tally is None
        feed = ReplyFeed(tally, prepare)
        before = _copied(self.strategy.state())
        passed = ReplyTally(feed, parent=tally)
        # As `start` does for the strategy it runs: a wrapped strategy that turns the
        # replies into a list of its own still rejects on the round's tally.
        self.strategy._round_tally = passed
        try:
            result = self.strategy.aggregate_train(server_round, passed)
        finally:
            self.strategy._round_tally = None
        feed.drain()
        if report:
            log(f"aggregate_train: Received {tally.usable} results and {tally.failures} failures")
            for reason in tally.reasons:
                log(f"\t> {reason}")
        if feed.errors:
            log("aggregate_train: Some clients reported errors. Skipping aggregation.")
            if before:
                self.strategy.load_state(before)
            return None
        if passed.usable != self.num_sampled_clients:
            log("WARNING " + DISCREPANCY.format(passed.usable, self.num_sampled_clients))
        return result, feed

    def _rng(self, server_round: int) -> NormalSource:
        """Where this round's random draws come from (see the class docstring)."""
        if self.seed is None:
            return np.random
        return np.random.default_rng([self.seed, server_round])

    def _noised(self, arrays: ArrayRecord | None, rng: NormalSource) -> ArrayRecord | None:
        """The aggregate plus Gaussian noise of Flower's stddev (None stays None)."""
        if not arrays:
            return arrays
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        out = add_gaussian_noise(arrays, std, rng)
        log(f"aggregate_fit: central DP noise with {std:.4f} stdev added")
        return out

    # -- state ----------------------------------------------------------------------

    def _own_values(self) -> dict[str, StateValue]:
        """The wrapper's own state values (none for a fixed clipping norm)."""
        return {}

    def _load_own_values(self, values: dict[str, StateValue]) -> None:
        del values

    def state(self) -> StrategyState:
        """The wrapped strategy's state, its record and value names prefixed with
        `strategy.`, and the wrapper's own values (an adaptive clipping norm)."""
        inner = self.strategy.state()
        arrays = {INNER + name: record for name, record in inner.arrays.items()}
        values = {INNER + name: value for name, value in inner.values.items()}
        return StrategyState(arrays=arrays, values=values | self._own_values())

    def load_state(self, state: StrategyState) -> None:
        """Give the wrapped strategy its part of `state` and take the wrapper's own.
        ValueError (one line) if the wrapper's own values are missing or unusable."""
        inner = StrategyState(
            arrays={n[len(INNER) :]: r for n, r in state.arrays.items() if n.startswith(INNER)},
            values={n[len(INNER) :]: v for n, v in state.values.items() if n.startswith(INNER)},
        )
        self._load_own_values({n: v for n, v in state.values.items() if not n.startswith(INNER)})
        self.strategy.load_state(inner)


def _copied(state: StrategyState) -> StrategyState:
    """`state` safe from in-place updates: in-memory arrays copied, stored ones as
    new stored Arrays of the same bytes (not read: `numpy()` reads them anew)."""
    arrays = {}
    for name, record in state.arrays.items():
        copy = ArrayRecord()
        for key, array in record.items():
            source = array.source
            if source is None:
                copy[key] = Array(array.numpy().copy())
            else:
                copy[key] = Array.stored(np.dtype(array.dtype).str, array.shape, source)
        arrays[name] = copy
    return StrategyState(arrays=arrays, values=dict(state.values))
