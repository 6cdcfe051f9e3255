"""Mods that log how much a message carries: Flower's `message_size_mod` and
`arrays_size_mod`. They log at INFO (to the app's log, as `flwr.common.logger.log`
does) and change nothing; sizes are counted as Flower counts them
(`count_bytes()`), without reading arrays still in the database."""

from __future__ import annotations

import math

from flpg.app.context import Context
from flpg.app.message import Message
from flpg.clientapp.clientapp import Handler
from flpg.clientapp.mod.precondition import log

__all__ = ["array_record_size_stats", "arrays_size_mod", "message_bytes", "message_size_mod"]


def message_bytes(msg: Message) -> int:
    """The bytes of the message's records (`RecordDict.count_bytes()`); 0 for an
    error reply, which carries no records (Flower's mod fails on one)."""
    return msg.content.count_bytes() if msg.has_content() else 0


def array_record_size_stats(msg: Message) -> dict[str, dict[str, int]]:
    """`{record name: {"elements": values in its arrays, "bytes": count_bytes()}}` for
    each ArrayRecord of the message (none for an error reply)."""
    if not msg.has_content():
        return {}
    return {
        name: {
            "elements": sum(math.prod(array.shape) for array in record.values()),
            "bytes": record.count_bytes(),
        }
        for name, record in msg.content.array_records.items()
    }


def message_size_mod(msg: Message, ctxt: Context, call_next: Handler) -> Message:
    """Logs the size in bytes of the incoming message and of the reply."""
    log.info("Incoming message size: %i bytes", message_bytes(msg))
    reply = call_next(msg, ctxt)
    log.info("Outgoing message size: %i bytes", message_bytes(reply))
    return reply


def _log_stats(stats: dict[str, dict[str, int]], direction: str, total_what: str) -> None:
    if stats:
        log.info("%s `ArrayRecord` size statistics:", direction)
        log.info("%s", stats)
    log.info(
        "Total array elements %s: %i bytes", total_what, sum(s["bytes"] for s in stats.values())
    )


def arrays_size_mod(msg: Message, ctxt: Context, call_next: Handler) -> Message:
    """Logs, for the incoming message and for the reply, the number of array
    elements and the bytes of each ArrayRecord, then their total bytes (in Flower's
    words: "Total array elements received: N bytes")."""
    _log_stats(array_record_size_stats(msg), "Incoming", "received")
    reply = call_next(msg, ctxt)
    _log_stats(array_record_size_stats(reply), "Outgoing", "sent")
    return reply
