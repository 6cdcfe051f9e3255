"""Central differential privacy with an adaptive clipping norm (Andrew et al.,
https://arxiv.org/abs/1905.03871): Flower's `DifferentialPrivacyServerSideAdaptiveClipping`
and `DifferentialPrivacyClientSideAdaptiveClipping`.

Each round counts the replies whose update was clipped (norm bits), adds Gaussian
noise of stddev `clipped_count_stddev` to the count, and moves the clipping norm
geometrically (Flower's rule, `dp_clipping.geometric_update`):
`clipping_norm *= exp(-clip_norm_lr * (noisy clipped fraction - target_clipped_quantile))`.
As in Flower, the aggregate's noise is computed with the norm after that update.
The norm is the wrapper's state: a restarted or resumed run continues with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.dp_clipping import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    NormalSource,
    adaptive_noise_params,
    check_numeric,
    geometric_update,
)
from flpg.serverapp.strategy.dp_fixed_clipping import clip_with_bit, reference_for
from flpg.serverapp.strategy.dp_wrapper import DifferentialPrivacyWrapper, number
from flpg.serverapp.strategy.state import StateValue
from flpg.serverapp.strategy.strategy import Strategy
from flpg.serverapp.strategy.strategy_utils import log

__all__ = [
    "DifferentialPrivacyAdaptiveBase",
    "DifferentialPrivacyClientSideAdaptiveClipping",
    "DifferentialPrivacyServerSideAdaptiveClipping",
]


class DifferentialPrivacyAdaptiveBase(DifferentialPrivacyWrapper):
    """What both adaptive-clipping wrappers share (Flower's base of that name).

    Parameters (Flower's, with Flower's defaults):

    - `strategy`: the strategy whose aggregate is made differentially private.
    - `noise_multiplier`: the noise multiplier z (>= 0) of the Gaussian mechanism.
      With z > 0 part of the privacy budget goes to the clipped count, and the
      aggregate's noise uses the effective multiplier `(z^-2 - (2 sigma_b)^-2)^-1/2`
      (held in `noise_multiplier`); z must be below `2 * clipped_count_stddev`.
    - `num_sampled_clients`: the number of nodes sampled each round (> 0).
    - `initial_clipping_norm` (0.1): the first round's clipping norm (> 0).
    - `target_clipped_quantile` (0.5): the fraction of updates meant to be clipped,
      in [0, 1].
    - `clip_norm_lr` (0.2): the learning rate of the norm's update (> 0).
    - `clipped_count_stddev` (None): the stddev sigma_b (>= 0) of the noise added to
      the count of clipped updates; None is `num_sampled_clients / 20` with noise,
      0 without.
    - `seed` (keyword, None; flpg's addition): see `DifferentialPrivacyWrapper`; it
      also drives the count's noise.

    Raises ValueError (Flower's messages) for a value out of its range above;
    TypeError for a value that is no finite number (an int for num_sampled_clients).
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        initial_clipping_norm: float = 0.1,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(strategy, noise_multiplier, num_sampled_clients, seed)
        if number("initial_clipping_norm", initial_clipping_norm) <= 0:
            raise ValueError("The initial clipping norm should be a positive value.")
        if not 0 <= number("target_clipped_quantile", target_clipped_quantile) <= 1:
            raise ValueError("The target clipped quantile must be in [0, 1].")
        if number("clip_norm_lr", clip_norm_lr) <= 0:
            raise ValueError("The learning rate must be positive.")
        if clipped_count_stddev is not None:
            if number("clipped_count_stddev", clipped_count_stddev) < 0:
                raise ValueError("The `clipped_count_stddev` must be non-negative.")
            clipped_count_stddev = float(clipped_count_stddev)
        self.clipping_norm = float(initial_clipping_norm)
        self.target_clipped_quantile = float(target_clipped_quantile)
        self.clip_norm_lr = float(clip_norm_lr)
        requested = self.noise_multiplier
        self.clipped_count_stddev, self.noise_multiplier = adaptive_noise_params(
            requested, num_sampled_clients, clipped_count_stddev
        )
        if requested > 0 and self.noise_multiplier / requested >= 2:
            log(
                f"WARNING A significant amount of noise ({self.noise_multiplier / requested}) "
                "has to be added. Consider increasing `clipped_count_stddev` or "
                "`num_sampled_clients`."
            )

    def _settings(self) -> list[str]:
        return [
            f"\t│\t├── Noise multiplier: {self.noise_multiplier}",
            f"\t│\t├── Clipping norm: {self.clipping_norm}",
            f"\t│\t├── Target clipped quantile: {self.target_clipped_quantile}",
            f"\t│\t└── Clip norm learning rate: {self.clip_norm_lr}",
        ]

    def _adapt(self, clipped: int, total: int, rng: NormalSource) -> None:
        """Move the clipping norm by the noisy fraction of clipped updates (no
        replies: unchanged, where Flower divides by zero)."""
        if total <= 0:
            return
        fraction = float(rng.normal(clipped, self.clipped_count_stddev)) / total
        self.clipping_norm = geometric_update(
            self.clipping_norm, fraction, self.target_clipped_quantile, self.clip_norm_lr
        )

    def _own_values(self) -> dict[str, StateValue]:
        return {KEY_CLIPPING_NORM: self.clipping_norm}

    def _load_own_values(self, values: dict[str, StateValue]) -> None:
        value = values.get(KEY_CLIPPING_NORM)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"the saved clipping norm must be a positive number, got {value!r}")
        self.clipping_norm = float(value)


class DifferentialPrivacyServerSideAdaptiveClipping(DifferentialPrivacyAdaptiveBase):
    """Central DP with server-side adaptive clipping: the ServerApp clips each reply's
    update (its arrays minus the round's global arrays) to the current clipping
    norm, the wrapped strategy aggregates the clipped replies, the norm adapts to
    the fraction that was clipped, and Gaussian noise is added to the aggregate.
    Parameters: see `DifferentialPrivacyAdaptiveBase`.

    Replies stream as in `DifferentialPrivacyServerSideFixedClipping` (memory: the
    global model and one reply in flight), with its rejections; the clipped
    fraction is over the replies passed to the wrapped strategy. As in Flower, a
    round in which any reply carries an error is not aggregated and the norm stays.
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        initial_clipping_norm: float = 0.1,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier,
            num_sampled_clients,
            initial_clipping_norm,
            target_clipped_quantile,
            clip_norm_lr,
            clipped_count_stddev,
            seed=seed,
        )
        self.current_arrays = ArrayRecord()
        """The global arrays of the last `configure_train` (updates are measured from them)."""

    def __repr__(self) -> str:
        return "Differential Privacy Strategy Wrapper (Server-Side Adaptive Clipping)"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training instructions; remembers `arrays`."""
        check_numeric(arrays, type(self).__name__)
        self.current_arrays = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregate of the clipped replies, plus noise; the
        norm adapted. `(None, None)` if a reply carried an error or none was usable;
        ValueError if `configure_train` was not called first."""
        reference = reference_for(self.current_arrays, type(self).__name__)
        norm = self.clipping_norm
        clipped = 0

        def prepare(reply: Message) -> Message:
            nonlocal clipped
            clipped += clip_with_bit(reference, reply, norm)
            return reply

        outcome = self._feed_inner(server_round, replies, prepare)
        if outcome is None:
            return None, None
        (arrays, metrics), feed = outcome
        rng = self._rng(server_round)
        if feed.passed:
            log(f"aggregate_train: arrays in `ArrayRecord` are clipped by value: {norm:.4f}.")
        self._adapt(clipped, feed.passed, rng)
        return self._noised(arrays, rng), metrics


class DifferentialPrivacyClientSideAdaptiveClipping(DifferentialPrivacyAdaptiveBase):
    """Central DP with client-side adaptive clipping: each ClientApp clips its own
    update with `adaptiveclipping_mod` (flpg.clientapp.mod) to the clipping norm
    this wrapper puts in every training instruction's config (key `clipping_norm`)
    and reports whether it clipped (metric `norm_bit`); the wrapped strategy
    aggregates the replies, the norm adapts to the fraction clipped, and Gaussian
    noise is added to the aggregate. Parameters: see `DifferentialPrivacyAdaptiveBase`.

    Server: `DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), 1.0, 10)`;
    client: `ClientApp(mods=[adaptiveclipping_mod])`. A reply without a numeric
    `norm_bit` metric is rejected (Flower fails the round with AggregationError).
    As in Flower, a round in which any reply carries an error is not aggregated.
    """

    def __repr__(self) -> str:
        return "Differential Privacy Strategy Wrapper (Client-Side Adaptive Clipping)"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training instructions, with the current clipping
        norm set in `config` under `clipping_norm`."""
        check_numeric(arrays, type(self).__name__)
        config[KEY_CLIPPING_NORM] = self.clipping_norm
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregate plus noise; the norm adapted from the
        replies' norm bits. `(None, None)` if a reply carried an error or none was
        usable."""
        clipped = 0

        def prepare(reply: Message) -> Message:
            nonlocal clipped
            clipped += norm_bit(reply)
            return reply

        outcome = self._feed_inner(server_round, replies, prepare)
        if outcome is None:
            return None, None
        (arrays, metrics), feed = outcome
        rng = self._rng(server_round)
        self._adapt(clipped, feed.passed, rng)
        return self._noised(arrays, rng), metrics


def norm_bit(reply: Message) -> int:
    """1 if the reply's `norm_bit` metric (in its first MetricRecord holding one) is
    true, else 0; ReplyRejected if no MetricRecord holds a number under it."""
    for record in reply.content.metric_records.values():
        value = record.get(KEY_NORM_BIT)
        if isinstance(value, int | float):
            return int(bool(value))
    raise ReplyRejected(
        f"reply has no numeric metric {KEY_NORM_BIT!r} (the ClientApp needs adaptiveclipping_mod)"
    )
