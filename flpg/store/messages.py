"""Messages: inserting instructions, claiming, replying, pulling, and the link's sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from flpg.app import arrays
from flpg.app.message import error_code_to_stored
from flpg.errors import SelectionError
from flpg.states import SELECTION_FKS
from flpg.store._exec import one, rows, run
from flpg.store.db import Connection
from flpg.store.text import REASON_LIMIT, storable


@dataclass(frozen=True)
class ArrayLink:
    """One array carried by a message: `record_name[array_name]` at `position`."""

    record_name: str
    position: int
    array_name: str
    array_id: int


@dataclass(frozen=True)
class NewInstruction:
    dst_node_id: int
    group_id: str
    message_type: str
    ttl: float
    metrics: dict[str, Any]
    configs: dict[str, Any]
    arrays: Sequence[ArrayLink]
    send_key: str | None = None
    """Chosen by the sender, unique per run: inserting an instruction whose key the run
    already has inserts nothing and answers the existing row (see `insert_instructions`)."""


@dataclass(frozen=True)
class NewReply:
    reply_to: int
    metrics: dict[str, Any]
    configs: dict[str, Any]
    arrays: Sequence[ArrayLink]
    error_code: int | None = None
    error_reason: str | None = None


@dataclass(frozen=True)
class MessageRow:
    """A stored message as a worker or the ServerApp receives it."""

    id: int
    run_id: int
    src_node_id: int | None
    dst_node_id: int | None
    reply_to: int | None
    group_id: str
    message_type: str
    ttl_seconds: float
    created_at: float
    metrics: dict[str, Any]
    configs: dict[str, Any]
    error_code: int | None = None
    error_reason: str | None = None
    attempts: int = 0


def _reason(reason: str | None) -> str | None:
    """An error reply's reason as stored: app text, so made storable and bounded."""
    return None if reason is None else storable(reason, REASON_LIMIT)


def _batch_docs(
    instructions: Sequence[NewInstruction],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The JSON rows of messages_insert_batch: one per instruction, one per array link;
    `ord` is the instruction's position."""
    docs = [
        {
            "ord": i,
            "dst_node_id": m.dst_node_id,
            "group_id": m.group_id,
            "message_type": m.message_type,
            "ttl": m.ttl,
            "metrics": m.metrics,
            "configs": m.configs,
            "send_key": m.send_key,
        }
        for i, m in enumerate(instructions)
    ]
    links = [
        {
            "ord": i,
            "record_name": a.record_name,
            "position": a.position,
            "array_name": a.array_name,
            "array_id": a.array_id,
        }
        for i, m in enumerate(instructions)
        for a in m.arrays
    ]
    return docs, links


def _outside_selection(
    conn: Connection, run_id: int, instructions: Sequence[NewInstruction]
) -> SelectionError:
    """The error naming the destinations outside the run's node selection."""
    # The whole selection, offline nodes included: an offline selected node is a
    # valid destination and must not be named as outside it.
    selected = {int(r["id"]) for r in rows(conn, "run_nodes_list", {"run_id": run_id})}
    outside = sorted({m.dst_node_id for m in instructions} - selected)
    return SelectionError(
        f"node {', '.join(map(str, outside)) or '?'} is not in the node selection "
        f"of run {run_id}; address only nodes from grid.get_node_ids()"
    )


def insert_instructions(
    conn: Connection, run_id: int, instructions: Sequence[NewInstruction]
) -> list[tuple[int, float]]:
    """Insert instructions and wake their nodes in one small transaction.

    Returns `(message_id, created_at)` per instruction, in order. An instruction whose
    `send_key` the run already has is not inserted again: its existing row is
    answered (so a retried send returns what its first try committed). Raises
    SelectionError (and inserts nothing) if a destination is outside the run's node
    selection. Payloads must already be written (see `payloads.write`).
    """
    if not instructions:
        return []
    docs, links = _batch_docs(instructions)
    try:
        # One statement: the rows, their links and the NOTIFYs commit together.
        created = rows(
            conn,
            "messages_insert_batch",
            {"run_id": run_id, "instructions": Jsonb(docs), "links": Jsonb(links)},
        )
    except psycopg.errors.ForeignKeyViolation as exc:
        if exc.diag.constraint_name in SELECTION_FKS:
            raise _outside_selection(conn, run_id, instructions) from exc
        raise
    out: dict[int, tuple[int, float]] = {
        int(r["ord"]): (int(r["id"]), float(r["created_at"])) for r in created
    }
    skipped = {m.send_key: i for i, m in enumerate(instructions) if i not in out}
    if skipped:  # their keys were taken by an earlier try, committed before this statement
        found = sent(conn, run_id, [k for k in skipped if k is not None])
        out.update({skipped[k]: v for k, v in found.items()})
    if len(out) != len(instructions):
        raise RuntimeError(f"run {run_id}: {len(instructions) - len(out)} instruction(s) lost")
    return [out[i] for i in range(len(instructions))]


def sent(conn: Connection, run_id: int, send_keys: Sequence[str]) -> dict[str, tuple[int, float]]:
    """`{send_key: (message_id, created_at)}` of the run's instructions with these keys."""
    if not send_keys:
        return {}
    found = rows(conn, "messages_list_sent", {"run_id": run_id, "keys": list(send_keys)})
    return {str(r["send_key"]): (int(r["id"]), float(r["created_at"])) for r in found}


def claim(
    conn: Connection, *, worker: str, node_ids: list[int], lease: float, limit: int
) -> list[MessageRow]:
    """Claim up to `limit` queued instructions addressed to `node_ids` (SKIP LOCKED),
    fairly across runs (see messages_claim), in one statement; returned by id."""
    if limit <= 0 or not node_ids:
        return []
    found = rows(
        conn,
        "messages_claim",
        {"worker": worker, "node_ids": node_ids, "lease": lease, "limit": limit},
    )
    return [
        MessageRow(src_node_id=None, reply_to=None, **r)
        for r in sorted(found, key=lambda r: r["id"])
    ]


def extend_lease(conn: Connection, *, worker: str, ids: list[int], lease: float) -> list[int]:
    """Extend the leases this worker holds; returns the ids it still holds."""
    if not ids:
        return []
    return [
        int(r["id"])
        for r in rows(conn, "messages_extend_lease", {"worker": worker, "ids": ids, "lease": lease})
    ]


def write_small_arrays(
    conn: Connection,
    run_id: int,
    encoded: Sequence[arrays.EncodedArray],
    chunk_size: int,
    *,
    durable: bool = True,
) -> list[int]:
    """Store arrays of at most `chunk_size` bytes each, all in one statement (so one
    transaction, no NOTIFY); returns their ids in order. For many small reply
    payloads, where `payloads.write` would take a round trip per array. `durable` as
    in `payloads.write`."""
    if not encoded:
        return []
    for enc in encoded:
        if enc.nbytes > (enc.chunk_size or chunk_size):
            raise ValueError(f"array of {enc.nbytes} bytes is larger than one chunk")
    # One chunk each: the raw bytes (zero-copy), or the one encoded chunk.
    stored = [enc.data if enc.chunks is None else b"".join(enc.chunks) for enc in encoded]
    found = rows(
        conn,
        "arrays_insert_small",
        {
            "run_id": run_id,
            "chunk_size": chunk_size,
            "dtypes": [enc.dtype for enc in encoded],
            "shapes": ["{" + ",".join(map(str, enc.shape)) + "}" for enc in encoded],
            "nbytes": [enc.nbytes for enc in encoded],
            "digests": [arrays.digest(data) for data in stored],
            "datas": stored,
            "codecs": [enc.codec for enc in encoded],
            "bases": [enc.base_array_id for enc in encoded],
            "digest_alg": arrays.DEFAULT_DIGEST_ALG,
            "durable": durable,
        },
    )
    return [int(r["id"]) for r in found]


def reply_batch(conn: Connection, *, worker: str, replies: Sequence[NewReply]) -> dict[int, int]:
    """Complete claimed instructions and insert their replies in one statement (so one
    transaction), notifying each run once; payloads must already be written.

    Returns `{instruction id: reply id}` for the replies written. An instruction
    missing from it got no reply from here: this worker no longer held its claim
    (lease ran out, expired or cancelled), and it was left as it was. Each
    instruction is completed together with its own reply, or not at all. Error
    reasons are stored as `storable(reason, REASON_LIMIT)`.
    """
    if not replies:
        return {}
    docs = [
        {
            "reply_to": r.reply_to,
            "metrics": r.metrics,
            "configs": r.configs,
            "error_code": None if r.error_code is None else error_code_to_stored(r.error_code),
            "error_reason": None if r.error_code is None else _reason(r.error_reason or ""),
        }
        for r in replies
    ]
    links = [
        {
            "reply_to": r.reply_to,
            "record_name": a.record_name,
            "position": a.position,
            "array_name": a.array_name,
            "array_id": a.array_id,
        }
        for r in replies
        for a in r.arrays
    ]
    found = rows(
        conn,
        "messages_insert_replies",
        {"worker": worker, "replies": Jsonb(docs), "links": Jsonb(links)},
    )
    return {int(r["reply_to"]): int(r["id"]) for r in found}


def release(conn: Connection, *, worker: str) -> int:
    """Hand this worker's claimed instructions back to the queue and wake their nodes."""
    with conn.transaction():
        released = rows(conn, "messages_release", {"worker": worker})
        for run_id in {r["run_id"] for r in released}:
            node_ids = sorted({r["dst_node_id"] for r in released if r["run_id"] == run_id})
            run(conn, "nodes_notify", {"run_id": run_id, "node_ids": node_ids})
    return len(released)


def pull_replies(
    conn: Connection, run_id: int, instruction_ids: list[int], *, again: bool = False
) -> list[MessageRow]:
    """Take (mark done) the replies that arrived for the given instructions of run
    `run_id`; with `again`, return those taken before too (the caller deduplicates).
    Ids of another run's instructions take and return nothing."""
    if not instruction_ids:
        return []
    # One statement on an autocommit connection: atomic without BEGIN/COMMIT round trips.
    params = {"run_id": run_id, "ids": instruction_ids, "again": again}
    found = rows(conn, "messages_pull_replies", params)
    return [MessageRow(dst_node_id=None, **r) for r in sorted(found, key=lambda r: r["id"])]


def requeue_lapsed(conn: Connection) -> int:
    """Link sweep: make instructions whose lease ran out claimable again."""
    with conn.transaction():
        row = one(conn, "messages_requeue_lapsed")
    return int(row["requeued"]) if row else 0


def expire(conn: Connection, error_code: int) -> int:
    """Link sweep: expire instructions past their TTL, each with an error reply."""
    with conn.transaction():
        row = one(conn, "messages_expire", {"error_code": error_code_to_stored(error_code)})
    return int(row["expired"]) if row else 0


def fail_offline(conn: Connection, node_ids: list[int], error_code: int) -> int:
    """Link sweep: expire the undelivered instructions of nodes that went offline,
    each with an error reply naming its node; returns how many expired.

    Call it in the transaction that marked `node_ids` offline, so that a link dying
    in between leaves both undone for the next sweep rather than half done.
    """
    if not node_ids:
        return 0
    with conn.transaction():
        params = {"node_ids": node_ids, "error_code": error_code_to_stored(error_code)}
        row = one(conn, "messages_fail_offline", params)
    return int(row["expired"]) if row else 0


def reject_replies(conn: Connection, run_id: int, rejections: Sequence[tuple[int, str]]) -> int:
    """Record on each reply `(message id, reason)` why its strategy did not use it
    (each reason made storable and bounded: it may quote app-chosen names)."""
    if not rejections:
        return 0
    ids = [message_id for message_id, _ in rejections]
    reasons = [storable(reason, REASON_LIMIT) for _, reason in rejections]
    return run(conn, "messages_reject_replies", {"run_id": run_id, "ids": ids, "reasons": reasons})
