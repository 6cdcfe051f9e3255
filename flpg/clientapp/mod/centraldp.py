"""Client-side clipping for central DP: Flower's `fixedclipping_mod` and
`adaptiveclipping_mod`.

Each reads the clipping norm from the key `clipping_norm` of the instruction's one
ConfigRecord, runs the rest of the chain, and replaces the reply's one ArrayRecord
by the received arrays plus the update clipped to that norm (`clipping.py`).
Flower sends the norm from its DifferentialPrivacyClientSide*Clipping strategy
wrappers, which flpg lacks; with flpg's FedAvg, put it in the train config:
`FedAvg().start(..., train_config=ConfigRecord({"clipping_norm": 1.0}))`. Server
side noise is then not added.

As in Flower, the mods look at whatever message they wrap (register them for
`train` handlers); an instruction or reply they cannot work with is answered with
an error reply of code MOD_FAILED_PRECONDITION (`precondition.py`), and a reply
that already carries an error is passed on unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from flpg.app.context import Context
from flpg.app.message import Message
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord
from flpg.clientapp.clientapp import Handler
from flpg.clientapp.mod.clipping import clip_update
from flpg.clientapp.mod.precondition import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    ModPrecondition,
    log,
    only_record,
    received_arrays,
    refuse,
    replied_arrays,
)

__all__ = ["adaptiveclipping_mod", "fixedclipping_mod"]


def _clipping_norm(mod: str, msg: Message) -> float:
    """The positive, finite number at `clipping_norm` in the message's one ConfigRecord."""
    _, config = only_record(mod, msg.content.config_records, ConfigRecord)
    if KEY_CLIPPING_NORM not in config:
        raise ModPrecondition(
            f"{mod} requires the key '{KEY_CLIPPING_NORM}' to be present in the "
            "ConfigRecord, but it was not found; send it in the train config (e.g. "
            f"FedAvg().start(..., train_config=ConfigRecord({{'{KEY_CLIPPING_NORM}': 1.0}})))."
        )
    value: Any = config[KEY_CLIPPING_NORM]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModPrecondition(f"{mod}: '{KEY_CLIPPING_NORM}' must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ModPrecondition(f"{mod}: '{KEY_CLIPPING_NORM}' must be positive, got {value!r}")
    return float(value)


def _clip(mod: str, msg: Message, ctxt: Context, call_next: Handler, adaptive: bool) -> Message:
    try:
        only_record(mod, msg.content.array_records, ArrayRecord)  # Flower's order of checks
        clipping_norm = _clipping_norm(mod, msg)
        names, received = received_arrays(mod, msg)
    except ModPrecondition as exc:
        return refuse(msg, str(exc))
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    try:
        key, returned = replied_arrays(mod, reply, names)
        metrics: MetricRecord | None = None
        if adaptive:
            _, metrics = only_record(mod, reply.content.metric_records, MetricRecord)
        try:
            clipped, norm_bit = clip_update(received, returned, clipping_norm)
        except ValueError as exc:
            raise ModPrecondition(f"{mod} cannot clip the update: {exc}") from None
    except ModPrecondition as exc:
        return refuse(msg, str(exc))
    what = "ndarrays" if adaptive else "parameters"
    log.info("%s: %s are clipped by value: %.4f.", mod, what, clipping_norm)
    reply.content[key] = ArrayRecord(
        {name: Array(array) for name, array in zip(names, clipped, strict=True)}
    )
    if metrics is not None:
        metrics[KEY_NORM_BIT] = int(norm_bit)  # MetricRecord has no bool
    return reply


def fixedclipping_mod(msg: Message, ctxt: Context, call_next: Handler) -> Message:
    """Client-side fixed clipping (Flower's): the reply's update, relative to the
    arrays received, clipped to the instruction's `clipping_norm` (module docstring).

    Requires exactly one ArrayRecord and one ConfigRecord (with `clipping_norm`) in
    the instruction, and exactly one ArrayRecord, with the received array names in
    order, in the reply. Put it last among mods that change the arrays.
    """
    return _clip("fixedclipping_mod", msg, ctxt, call_next, adaptive=False)


def adaptiveclipping_mod(msg: Message, ctxt: Context, call_next: Handler) -> Message:
    """Client-side adaptive clipping (Flower's): as fixedclipping_mod, and adds
    `norm_bit` (1 if the update was longer than the norm and clipped, else 0) to
    the reply's one MetricRecord, from which Flower's server-side wrapper adapts
    the norm. Requires exactly one MetricRecord in the reply besides what
    fixedclipping_mod requires.
    """
    return _clip("adaptiveclipping_mod", msg, ctxt, call_next, adaptive=True)
