"""The pipe between a node worker and a run's ClientApp process: one JSON object a line.

Worker -> process (the process's stdin): `Batch`, claimed messages to handle,
`{"messages": [{MessageRow fields}, ...], "node_configs": {"NODE_ID": {...}, ...}}`.
End of input asks the process to finish and exit.

Process -> worker (the process's original stdout): `Started`, handlers about to run,
`{"started": [MESSAGE_ID, ...]}`; and `Done`, what one write of replies did,
`{"done": [{"id": MESSAGE_ID, "outcome": OUTCOME, "detail": "...", "seconds": S}, ...]}`
with S the time from the handler's start to the reply's commit (0 if no handler ran).

Both ends encode and decode only here. The worker reads lines written next to app
code, so `decode_report` refuses anything but an exact report (`ProtocolError`); the
worker skips such a line and goes on with the process's next one.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from flpg.errors import FlpgError
from flpg.store.messages import MessageRow

LINE_LIMIT = 4 << 20
"""Bytes of one line read from a ClientApp process, at most (an honest line answers
at most 256 messages, each with a detail of about REASON_LIMIT characters at most:
well under 1 MiB)."""


class Outcome(StrEnum):
    """What became of one message a node handled."""

    REPLIED = "replied"
    """Its reply was written."""
    ERROR = "error"
    """An error reply was written."""
    LEASE_LOST = "lease-lost"
    """Nothing was written: the worker's claim was gone (or the database was)."""
    EXPIRED = "expired"
    """Nothing was written: its TTL passed before its handler started."""
    RELEASED = "released"
    """Nothing was written: the process was closed before its handler started."""


class ProtocolError(FlpgError):
    """A line that is not a message of this protocol."""


@dataclass(frozen=True)
class Batch:
    """Worker -> process: claimed messages, with the config of each node they are for."""

    messages: list[MessageRow]
    node_configs: dict[int, dict[str, Any]]

    def node_config(self, row: MessageRow) -> dict[str, Any]:
        """The config of the node `row` is for ({} if the batch names none)."""
        return self.node_configs.get(row.dst_node_id or 0, {})


@dataclass(frozen=True)
class Started:
    """Process -> worker: the handlers of these messages start now."""

    ids: list[int]


@dataclass(frozen=True)
class Settled:
    """What became of one message in the process."""

    id: int
    outcome: Outcome
    detail: str
    seconds: float = 0.0
    """From its handler's start to its reply's commit (0 if no handler ran)."""


@dataclass(frozen=True)
class Done:
    """Process -> worker: the messages one write of replies settled."""

    settled: list[Settled]


Report = Started | Done
"""What a ClientApp process tells its node worker."""


def encode_batch(rows: list[MessageRow], node_configs: dict[int, dict[str, Any]]) -> str:
    """The line (without its line end) handing `rows` to a process; `node_configs`
    may name more nodes than the rows are for (only theirs are sent)."""
    configs = {
        str(r.dst_node_id): node_configs.get(r.dst_node_id, {})
        for r in rows
        if r.dst_node_id is not None
    }
    messages = [{f.name: getattr(r, f.name) for f in fields(r)} for r in rows]
    return json.dumps({"messages": messages, "node_configs": configs})


def decode_batch(line: str | bytes) -> Batch:
    """The `Batch` of a line `encode_batch` wrote; raises `ProtocolError` otherwise."""
    doc = _object(line)
    messages, configs = doc.get("messages"), doc.get("node_configs", {})
    if not isinstance(messages, list) or not isinstance(configs, dict):
        raise ProtocolError("a batch needs a list of messages and an object of node configs")
    names = {f.name for f in fields(MessageRow)}
    rows: list[MessageRow] = []
    for m in messages:
        if not isinstance(m, dict) or not set(m) <= names:
            raise ProtocolError(f"not a message: {_excerpt(m)}")
        try:
            rows.append(MessageRow(**m))
        except TypeError as exc:
            raise ProtocolError(f"not a message: {exc}") from None
    try:
        by_node = {int(k): v for k, v in configs.items() if isinstance(v, dict)}
    except ValueError:
        raise ProtocolError("node configs must map node ids to objects") from None
    if len(by_node) != len(configs):
        raise ProtocolError("node configs must map node ids to objects")
    return Batch(rows, by_node)


def encode_report(report: Report) -> str:
    """The line (without its line end) of a process's report."""
    if isinstance(report, Started):
        return json.dumps({"started": report.ids})
    return json.dumps(
        {
            "done": [
                {"id": s.id, "outcome": str(s.outcome), "detail": s.detail, "seconds": s.seconds}
                for s in report.settled
            ]
        }
    )


def decode_report(line: str | bytes) -> Report:
    """The report of a line `encode_report` wrote. Raises `ProtocolError` for anything
    else: not JSON, another shape, a non-integer id, an unknown outcome, a negative
    or non-finite time."""
    doc = _object(line)
    if set(doc) == {"started"} and isinstance(doc["started"], list):
        return Started([_id(i) for i in doc["started"]])
    if set(doc) == {"done"} and isinstance(doc["done"], list):
        return Done([_settled(entry) for entry in doc["done"]])
    raise ProtocolError(f"neither started nor done: {_excerpt(doc)}")


def _settled(entry: Any) -> Settled:
    if not isinstance(entry, dict) or set(entry) != {"id", "outcome", "detail", "seconds"}:
        raise ProtocolError(f"not a settled message: {_excerpt(entry)}")
    seconds, detail = entry["seconds"], entry["detail"]
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ProtocolError(f"not a number of seconds: {_excerpt(seconds)}")
    if not isinstance(detail, str):
        raise ProtocolError(f"not a detail: {_excerpt(detail)}")
    try:
        outcome = Outcome(entry["outcome"])
    except ValueError:
        raise ProtocolError(f"not an outcome: {_excerpt(entry['outcome'])}") from None
    return Settled(_id(entry["id"]), outcome, detail, float(seconds))


def _id(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"not a message id: {_excerpt(value)}")
    return value


def _object(line: str | bytes) -> dict[str, Any]:
    """The JSON object of one line."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise ProtocolError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"not a JSON object: {_excerpt(doc)}")
    return doc


def _excerpt(value: Any) -> str:
    """A short repr of `value`, however big it is."""
    return reprlib.repr(value)
