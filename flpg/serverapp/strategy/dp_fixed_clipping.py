"""Central differential privacy with a fixed clipping norm: Flower's
`DifferentialPrivacyServerSideFixedClipping` and `DifferentialPrivacyClientSideFixedClipping`.

Papers: https://arxiv.org/abs/1712.07557, https://arxiv.org/abs/1710.06963.
"""

from __future__ import annotations

from collections.abc import Iterable

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.dp_clipping import KEY_CLIPPING_NORM, Reference, check_numeric
from flpg.serverapp.strategy.dp_wrapper import DISCREPANCY, DifferentialPrivacyWrapper, number
from flpg.serverapp.strategy.strategy import Strategy
from flpg.serverapp.strategy.strategy_utils import log

__all__ = [
    "DifferentialPrivacyClientSideFixedClipping",
    "DifferentialPrivacyFixedClippingBase",
    "DifferentialPrivacyServerSideFixedClipping",
    "validate_replies",
]


class DifferentialPrivacyFixedClippingBase(DifferentialPrivacyWrapper):
    """What both fixed-clipping wrappers share (Flower's base of that name).

    Parameters (Flower's):

    - `strategy`: the strategy whose aggregate is made differentially private.
    - `noise_multiplier`: the Gaussian mechanism's noise multiplier z (>= 0); the
      noise added to every value of the aggregate has stddev
      `z * clipping_norm / num_sampled_clients`. 1.0 or more is recommended.
    - `clipping_norm`: the L2 norm (> 0) each reply's update is clipped to.
    - `num_sampled_clients`: the number of nodes sampled each round (> 0); a round
      with another number of usable replies logs Flower's warning.
    - `seed` (keyword, None; flpg's addition): see `DifferentialPrivacyWrapper`.

    Raises ValueError (Flower's messages) for a negative noise multiplier, a clipping
    norm <= 0 or a number of sampled clients <= 0; TypeError for a value that is no
    finite number (an int for `num_sampled_clients`) or a strategy that is none.
    Flower's optional privacy `accountant` is not offered.
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(strategy, noise_multiplier, num_sampled_clients, seed)
        if number("clipping_norm", clipping_norm) <= 0:
            raise ValueError("The clipping norm should be a positive value.")
        self.clipping_norm = float(clipping_norm)


class DifferentialPrivacyServerSideFixedClipping(DifferentialPrivacyFixedClippingBase):
    """Central DP with server-side fixed clipping: the ServerApp clips each reply's
    update (its arrays minus the round's global arrays) to `clipping_norm`, the
    wrapped strategy aggregates the clipped replies, and Gaussian noise is added to
    the aggregate. Parameters: see `DifferentialPrivacyFixedClippingBase`.

    `dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 0.5, 10)`, then
    `dp.start(grid, arrays, ...)`.

    Replies are clipped one at a time as they arrive and passed on at once: a reply
    within the norm unchanged (its stored arrays are read once for the norm, then
    by the wrapped strategy), a longer one as an in-memory clipped copy, so memory
    is the global model plus one reply in flight, whatever the number of nodes.
    Every ArrayRecord of a reply is clipped; a reply without one, whose arrays do
    not match the model, or whose update is not finite is rejected (its reason on
    its row). As in Flower, a round in which any reply carries an error is not
    aggregated (`(None, None)`: the model stays; the wrapped strategy's state is
    put back). `configure_train` raises ValueError for a model with arrays that are
    neither float nor integer.
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients, seed=seed)
        self.current_arrays = ArrayRecord()
        """The global arrays of the last `configure_train` (updates are measured from them)."""

    def __repr__(self) -> str:
        return "Differential Privacy Strategy Wrapper (Server-Side Fixed Clipping)"

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
        """The wrapped strategy's aggregate of the clipped replies, plus noise;
        `(None, None)` if a reply carried an error or none was usable. ValueError if
        `configure_train` was not called first (no global arrays to clip against)."""
        reference = reference_for(self.current_arrays, type(self).__name__)
        norm = self.clipping_norm
        outcome = self._feed_inner(server_round, replies, lambda r: clip_reply(reference, r, norm))
        if outcome is None:
            return None, None
        (arrays, metrics), feed = outcome
        if feed.passed:
            log(f"aggregate_fit: parameters are clipped by value: {norm:.4f}.")
        return self._noised(arrays, self._rng(server_round)), metrics


class DifferentialPrivacyClientSideFixedClipping(DifferentialPrivacyFixedClippingBase):
    """Central DP with client-side fixed clipping: each ClientApp clips its own
    update with `fixedclipping_mod` (flpg.clientapp.mod), to the `clipping_norm`
    this wrapper puts in every training instruction's config (key `clipping_norm`);
    the wrapped strategy aggregates the replies and Gaussian noise is added to the
    aggregate. Parameters: see `DifferentialPrivacyFixedClippingBase`.

    Server: `DifferentialPrivacyClientSideFixedClipping(FedAvg(), 1.0, 0.5, 10)`;
    client: `ClientApp(mods=[fixedclipping_mod])`. As in Flower, a round in which
    any reply carries an error is not aggregated (`(None, None)`).
    """

    def __repr__(self) -> str:
        return "Differential Privacy Strategy Wrapper (Client-Side Fixed Clipping)"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training instructions, with `clipping_norm` set in
        `config` (the record the wrapped strategy puts in every instruction)."""
        check_numeric(arrays, type(self).__name__)
        config[KEY_CLIPPING_NORM] = self.clipping_norm
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregate plus noise; `(None, None)` if a reply
        carried an error or none was usable."""
        outcome = self._feed_inner(server_round, replies, lambda reply: reply)
        if outcome is None:
            return None, None
        (arrays, metrics), _ = outcome
        return self._noised(arrays, self._rng(server_round)), metrics


def reference_for(arrays: ArrayRecord, who: str) -> Reference:
    """The global arrays to clip against; ValueError if there are none."""
    if not arrays:
        raise ValueError(f"{who}: call configure_train before aggregate_train")
    return Reference(arrays)


def clip_reply(reference: Reference, reply: Message, clipping_norm: float) -> Message:
    """`reply` with each ArrayRecord's update clipped to `clipping_norm` (records
    replaced in its content); ReplyRejected if it has none or one cannot be clipped."""
    clip_with_bit(reference, reply, clipping_norm)
    return reply


def clip_with_bit(reference: Reference, reply: Message, clipping_norm: float) -> bool:
    """As `clip_reply`; whether any of the reply's updates was scaled down."""
    records = reply.content.array_records
    if not records:
        raise ReplyRejected("reply has no ArrayRecord to clip")
    clipped_any = False
    for key, record in records.items():
        clipped, bit = reference.clip(record, clipping_norm)
        if bit:
            reply.content[key] = clipped
            clipped_any = True
    return clipped_any


def validate_replies(
    replies: Iterable[Message], num_sampled_clients: int, strict: bool = False
) -> bool:
    """Flower's check before a DP aggregation, for apps that drive a round
    themselves: False (logged) if any reply carries an error, or, with `strict`, if
    the number of replies is not `num_sampled_clients` (otherwise only warned).
    Iterates `replies` once (pass a list to use it again)."""
    errors = content = 0
    for msg in replies:
        if msg.has_error():
            log(f"Received error in reply from node {msg.metadata.src_node_id}: {msg.error}")
            errors += 1
        else:
            content += 1
    if errors:
        log("aggregate_train: Some clients reported errors. Skipping aggregation.")
        return False
    log(f"aggregate_train: Received {content} results and {errors} failures")
    if content != num_sampled_clients:
        log("WARNING " + DISCREPANCY.format(content, num_sampled_clients))
        return not strict
    return True
