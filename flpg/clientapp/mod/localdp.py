"""Local differential privacy: Flower's `LocalDpMod`."""

from __future__ import annotations

import math

from flpg.app.context import Context
from flpg.app.message import Message
from flpg.app.records import Array, ArrayRecord
from flpg.clientapp.clientapp import Handler
from flpg.clientapp.mod.clipping import clip_update, gaussian_std, noised
from flpg.clientapp.mod.precondition import (
    ModPrecondition,
    log,
    received_arrays,
    refuse,
    replied_arrays,
)

__all__ = ["LocalDpMod"]

_NAME = "LocalDpMod"


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class LocalDpMod:
    """Clips the reply's update to `clipping_norm` (as fixedclipping_mod, relative
    to the arrays received) and adds Gaussian noise of standard deviation
    `sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon` to every value of the
    reply's arrays, as Flower's LocalDpMod does: `ClientApp(mods=[LocalDpMod(...)])`.

    Requires exactly one ArrayRecord in the instruction and in the reply, with the
    same array names in order; otherwise the reply is an error of code
    MOD_FAILED_PRECONDITION. Noise comes from numpy's global random state, as
    Flower's. Raises ValueError (Flower's messages) for clipping_norm <= 0 or
    sensitivity < 0, and, where Flower's formula gives no finite noise, for
    epsilon <= 0 or delta outside (0, 1); TypeError for a value that is no number.
    """

    def __init__(
        self, clipping_norm: float, sensitivity: float, epsilon: float, delta: float
    ) -> None:
        clipping_norm = _number("clipping_norm", clipping_norm)
        sensitivity = _number("sensitivity", sensitivity)
        epsilon = _number("epsilon", epsilon)
        delta = _number("delta", delta)
        if clipping_norm <= 0:
            raise ValueError("The clipping norm should be a positive value.")
        if sensitivity < 0:
            raise ValueError("The sensitivity should be a non-negative value.")
        if epsilon <= 0:
            raise ValueError("Epsilon should be a positive value.")
        if not 0 < delta < 1:
            raise ValueError("Delta should be a value in (0, 1).")
        self.clipping_norm = clipping_norm
        self.sensitivity = sensitivity
        self.epsilon = epsilon
        self.delta = delta

    @property
    def std_dev(self) -> float:
        """The standard deviation of the noise added to each value."""
        return gaussian_std(self.sensitivity, self.epsilon, self.delta)

    def __call__(self, msg: Message, ctxt: Context, call_next: Handler) -> Message:
        """Run the rest of the chain, then clip and noise the reply's arrays."""
        try:
            names, received = received_arrays(_NAME, msg)
        except ModPrecondition as exc:
            return refuse(msg, str(exc))
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        try:
            key, returned = replied_arrays(_NAME, reply, names)
            try:
                clipped, _ = clip_update(received, returned, self.clipping_norm)
            except ValueError as exc:
                raise ModPrecondition(f"{_NAME} cannot clip the update: {exc}") from None
        except ModPrecondition as exc:
            return refuse(msg, str(exc))
        log.info("LocalDpMod: parameters are clipped by value: %.4f.", self.clipping_norm)
        std_dev = self.std_dev
        arrays = noised(clipped, std_dev)
        log.info("LocalDpMod: local DP noise with %.4f stddev added to parameters", std_dev)
        reply.content[key] = ArrayRecord(
            {name: Array(array) for name, array in zip(names, arrays, strict=True)}
        )
        return reply

    def __repr__(self) -> str:
        return (
            f"LocalDpMod(clipping_norm={self.clipping_norm}, sensitivity={self.sensitivity}, "
            f"epsilon={self.epsilon}, delta={self.delta})"
        )
