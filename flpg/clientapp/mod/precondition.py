"""What Flower's mods require of a message and its reply, and the error reply a
mod answers with when that is not met (`ErrorCode.MOD_FAILED_PRECONDITION`,
logged at ERROR, as Flower's mods do)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from flpg.app.message import Error, ErrorCode, Message
from flpg.app.records import ArrayRecord

__all__ = [
    "KEY_CLIPPING_NORM",
    "KEY_NORM_BIT",
    "ModPrecondition",
    "log",
    "only_record",
    "received_arrays",
    "refuse",
    "replied_arrays",
]

KEY_CLIPPING_NORM = "clipping_norm"
"""The config key the clipping mods read their norm from (Flower's `KEY_CLIPPING_NORM`)."""

KEY_NORM_BIT = "norm_bit"
"""The metric adaptiveclipping_mod adds: 1 if the update was clipped (Flower's `KEY_NORM_BIT`)."""

log = logging.getLogger("flpg.app")
"""The logger `flwr.common.logger.log` writes to in flpg (flpg.common.logger)."""

_R = TypeVar("_R")


class ModPrecondition(Exception):
    """A message or reply a mod cannot work with; its text is the error reply's reason."""


def refuse(msg: Message, reason: str) -> Message:
    """The error reply to `msg` (the instruction) with `reason`, logged at ERROR."""
    log.error(reason)
    return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)


def only_record(mod: str, records: Mapping[str, _R], kind: type) -> tuple[str, _R]:
    """The name and record of the one record of `kind` in `records`."""
    if len(records) != 1:
        raise ModPrecondition(
            f"{mod} expects exactly one {kind.__name__}, but found {len(records)} "
            f"{kind.__name__}(s)."
        )
    return next(iter(records.items()))


def received_arrays(mod: str, msg: Message) -> tuple[list[str], list[npt.NDArray[Any]]]:
    """The names and a copy of the values of the message's one ArrayRecord: copies,
    since flpg hands a handler the received arrays themselves (Flower deserialises
    them anew), and a handler that changes them in place must not change the
    reference the update is measured from."""
    _, record = only_record(mod, msg.content.array_records, ArrayRecord)
    return list(record.keys()), [np.array(a.numpy(), copy=True) for a in record.values()]


def replied_arrays(mod: str, reply: Message, names: list[str]) -> tuple[str, list[Any]]:
    """The name and the values of the reply's one ArrayRecord, whose array names must
    be `names` in that order (those received)."""
    key, record = only_record(mod, reply.content.array_records, ArrayRecord)
    if list(record.keys()) != names:
        raise ModPrecondition(
            f"{mod} expects the keys in the ArrayRecord of the reply message to match "
            "those from the ArrayRecord that the ClientApp received, but they do not."
        )
    return key, record.to_numpy_ndarrays()
