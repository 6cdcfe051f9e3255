"""Array payloads: chunked bytea, written once, streamed back into numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flpg import arrays
from flpg.db import Connection
from flpg.errors import PayloadCorrupt
from flpg.sql import query
from flpg.store._exec import many, one, rows

DEFAULT_CHUNK_SIZE = 1 << 20
"""1 MiB chunk rows: the fastest write path measured here, and far below 1 GB."""


@dataclass(frozen=True)
class ArrayRef:
    """An array a message (or, with no message id, the run's checkpoint) carries."""

    message_id: int | None
    record_name: str
    position: int
    array_name: str
    array_id: int
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    n_chunks: int
    digest: bytes
    collected: bool = False
    """The link deleted its chunks: no live message or checkpoint needed it."""


def write(
    conn: Connection,
    run_id: int,
    encoded: Sequence[arrays.EncodedArray],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> list[int]:
    """Store arrays (one transaction, no NOTIFY); returns their ids in order."""
    ids: list[int] = []
    if not encoded:
        return ids
    with conn.transaction():
        for enc in encoded:
            n_chunks = -(-enc.nbytes // chunk_size)
            row = one(
                conn,
                "array_insert",
                {
                    "run_id": run_id,
                    "dtype": enc.dtype,
                    "shape": list(enc.shape),
                    "nbytes": enc.nbytes,
                    "chunk_size": chunk_size,
                    "n_chunks": n_chunks,
                    "digest": arrays.digest(enc.data),
                },
            )
            assert row is not None
            array_id = int(row["id"])
            many(
                conn,
                "array_chunk_insert",
                (
                    {"array_id": array_id, "seq": seq, "data": chunk}
                    for seq, chunk in enumerate(arrays.iter_chunks(enc.data, chunk_size))
                ),
            )
            ids.append(array_id)
    return ids


def refs(conn: Connection, message_ids: list[int]) -> list[ArrayRef]:
    """The arrays the given messages carry, by message, record and position."""
    if not message_ids:
        return []
    return [
        ArrayRef(**{**r, "shape": tuple(r["shape"]), "digest": bytes(r["digest"])})
        for r in rows(conn, "message_array_refs", {"message_ids": message_ids})
    ]


def read(conn: Connection, wanted: Sequence[ArrayRef]) -> dict[int, np.ndarray[Any, Any]]:
    """Stream the chunks of the referenced arrays into one numpy array each.

    Each array is read once however many refs name it. Raises PayloadCorrupt
    (naming the array and the message) on a missing chunk, a length mismatch or
    a digest mismatch.
    """
    by_id: dict[int, ArrayRef] = {}
    for ref in wanted:
        by_id.setdefault(ref.array_id, ref)
    if not by_id:
        return {}

    def label(ref: ArrayRef) -> str:
        owner = "the checkpoint" if ref.message_id is None else f"message {ref.message_id}"
        return f"{ref.record_name}[{ref.array_name!r}] of {owner}"

    for ref in by_id.values():
        if ref.collected:
            raise PayloadCorrupt(
                f"array {label(ref)} was collected: its message ended more than the "
                "collection grace period ago (FLPG_PAYLOAD_GRACE)"
            )
    assemblers = {
        i: arrays.ArrayAssembler(r.dtype, r.shape, r.nbytes, label(r)) for i, r in by_id.items()
    }
    expected_seq = dict.fromkeys(by_id, 0)
    with conn.cursor(binary=True) as cur:
        for array_id, seq, data in cur.stream(
            query("array_chunks_stream"), {"array_ids": sorted(by_id)}
        ):
            if seq != expected_seq[array_id]:
                raise PayloadCorrupt(
                    f"array {label(by_id[array_id])} is missing chunk {expected_seq[array_id]}"
                )
            expected_seq[array_id] += 1
            assemblers[array_id].add(data)
    out: dict[int, np.ndarray[Any, Any]] = {}
    for array_id, ref in by_id.items():
        if expected_seq[array_id] != ref.n_chunks:
            raise PayloadCorrupt(
                f"array {label(ref)} has {expected_seq[array_id]} of {ref.n_chunks} chunks"
            )
        arr = assemblers[array_id].finish()
        if arrays.digest(arrays.encode(arr, ref.array_name).data) != ref.digest:
            raise PayloadCorrupt(f"array {label(ref)} fails its digest check")
        out[array_id] = arr
    return out


def collect(conn: Connection, *, grace: float, limit: int = 1000) -> tuple[int, int]:
    """Link: delete the chunks of up to `limit` arrays nothing live needs (see
    payloads_collect); returns `(arrays, bytes)` collected."""
    with conn.transaction():
        row = one(conn, "payloads_collect", {"grace": grace, "limit": limit})
    assert row is not None
    return int(row["arrays"]), int(row["bytes"])
