"""Array payloads: chunked bytea, written once, streamed back into numpy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flpg.app import arrays
from flpg.app.compressed import Decoder
from flpg.errors import PayloadCorrupt
from flpg.store._exec import one, rows
from flpg.store.db import Connection
from flpg.store.sql import query

DEFAULT_CHUNK_SIZE = 1 << 20
"""1 MiB chunk rows: the fastest write path measured here, and far below 1 GB."""

SMALL_READ = 1 << 20
"""A read of at most this many (uncompressed) payload bytes fetches its chunk rows at
once, as a statement that can be prepared; a larger one streams them row by row
(bounded memory), which psycopg cannot prepare."""


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
    chunk_size: int = DEFAULT_CHUNK_SIZE
    digest_alg: str = arrays.DEFAULT_DIGEST_ALG
    codec: str | None = None
    """None: the chunks are the raw bytes; else the codec of each chunk (codecs.py)."""
    base_array_id: int | None = None
    """A top-k delta's base (the array its chunks add to)."""
    durable: bool = True
    """Chunks in array_chunks (WAL-logged) or array_chunks_transient (lost on a crash)."""
    collected: bool = False
    """The link deleted its chunks: no live message or checkpoint needed it."""
    lost: bool = False
    """A crash emptied its (round-transient) chunks."""


def write(
    conn: Connection,
    run_id: int,
    encoded: Sequence[arrays.EncodedArray],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    durable: bool = True,
) -> list[int]:
    """Store arrays (one transaction, no NOTIFY); returns their ids in order.

    `durable=False` puts the chunks in array_chunks_transient (no WAL; a crash loses
    them): for round-transient payloads, replies and broadcasts.
    """
    ids: list[int] = []
    if not encoded:
        return ids
    chunk_query = (
        query("array_chunks_insert") if durable else query("array_chunks_transient_insert")
    )
    with conn.transaction():
        for enc in encoded:
            size = enc.chunk_size or chunk_size
            row = one(
                conn,
                "arrays_insert",
                {
                    "run_id": run_id,
                    "dtype": enc.dtype,
                    "shape": list(enc.shape),
                    "nbytes": enc.nbytes,
                    "chunk_size": size,
                    "n_chunks": -(-enc.nbytes // size),
                    "digest": arrays.stored_digest(enc, size),
                    "digest_alg": arrays.DEFAULT_DIGEST_ALG,
                    "durable": durable,
                    "codec": enc.codec,
                    "base_array_id": enc.base_array_id,
                },
            )
            assert row is not None
            array_id = int(row["id"])
            # One statement per chunk, not a pipelined executemany: a pipeline queues
            # the whole array in libpq's output buffer, and every partial send to a
            # busy server moves the unsent rest to the front (quadratic). Measured with
            # 8 concurrent 128 MiB writers: 0.46 CPU-s per writer pipelined, 0.08 so.
            with conn.cursor() as cur:
                for seq, chunk in enumerate(arrays.stored_chunks(enc, size)):
                    cur.execute(chunk_query, {"array_id": array_id, "seq": seq, "data": chunk})
            ids.append(array_id)
    return ids


def decoder_for(ref: ArrayRef) -> Decoder | None:
    """The decoder of a compressed array's stored chunks (None: they are raw)."""
    if ref.codec is None:
        return None
    return Decoder(ref.codec, ref.dtype, ref.shape, ref.chunk_size, label(ref))


def label(ref: ArrayRef) -> str:
    owner = "the checkpoint" if ref.message_id is None else f"message {ref.message_id}"
    return f"{ref.record_name}[{ref.array_name!r}] of {owner}"


def check_readable(ref: ArrayRef) -> None:
    if ref.lost:
        raise PayloadCorrupt(
            f"array {label(ref)} was lost: PostgreSQL crashed, and round-transient "
            "payloads are not WAL-logged (the run restarts from its last checkpoint)"
        )
    if ref.collected:
        raise PayloadCorrupt(
            f"array {label(ref)} was collected: its message ended more than the "
            "collection grace period ago (FLPG_PAYLOAD_GRACE)"
        )


def refs(conn: Connection, message_ids: list[int]) -> list[ArrayRef]:
    """The arrays the given messages carry, by message, record and position."""
    if not message_ids:
        return []
    return [
        ArrayRef(**{**r, "shape": tuple(r["shape"]), "digest": bytes(r["digest"])})
        for r in rows(conn, "message_arrays_list", {"message_ids": message_ids})
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

    for ref in by_id.values():
        check_readable(ref)
    assemblers = {
        i: arrays.ArrayAssembler(r.dtype, r.shape, r.nbytes, label(r)) for i, r in by_id.items()
    }
    hashers = {i: arrays.Digest(alg=r.digest_alg) for i, r in by_id.items()}
    decoders = {i: decoder_for(r) for i, r in by_id.items()}
    bases = {  # top-k deltas: their bases' bytes, read and checked before the chunks
        i: checked_base(conn, by_id[i])
        for i, d in decoders.items()
        if d is not None and d.needs_base
    }
    expected_seq = dict.fromkeys(by_id, 0)
    with conn.cursor(binary=True) as cur:
        for array_id, seq, data in chunk_rows(cur, list(by_id.values())):
            if seq != expected_seq[array_id]:
                raise PayloadCorrupt(
                    f"array {label(by_id[array_id])} is missing chunk {expected_seq[array_id]}"
                )
            expected_seq[array_id] += 1
            hashers[array_id].update(data)
            decoder = decoders[array_id]
            if decoder is None:
                assemblers[array_id].add(data)
                continue
            base = None
            if array_id in bases:
                start, stop = decoder.base_range(seq, seq)
                base = memoryview(bases[array_id])[start:stop]
            assemblers[array_id].add(decoder.decode(seq, data, base))
    out: dict[int, np.ndarray[Any, Any]] = {}
    for array_id, ref in by_id.items():
        if expected_seq[array_id] != ref.n_chunks:
            raise PayloadCorrupt(
                f"array {label(ref)} has {expected_seq[array_id]} of {ref.n_chunks} chunks"
            )
        arr = assemblers[array_id].finish()
        if hashers[array_id].digest() != ref.digest:
            raise PayloadCorrupt(f"array {label(ref)} fails its digest check")
        out[array_id] = arr
    return out


def chunk_rows(cur: Any, wanted: Sequence[ArrayRef]) -> Iterable[tuple[int, int, bytes]]:
    """`(array_id, seq, data)` of the referenced arrays' chunks, by array and seq, on
    binary cursor `cur`: fetched at once up to SMALL_READ bytes, else streamed."""
    by_id = {r.array_id: r.nbytes for r in wanted}
    params = {"array_ids": sorted(by_id)}
    if sum(by_id.values()) <= SMALL_READ:
        return cur.execute(query("array_chunks_stream"), params).fetchall()  # type: ignore[no-any-return]
    return cur.stream(query("array_chunks_stream"), params)  # type: ignore[no-any-return]


def base_bytes(conn: Connection, ref: ArrayRef, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the base a top-k delta adds to (one ranged query),
    unchecked (see BaseCheck, which must have accepted `ref` first); `PayloadCorrupt`
    naming the array when its base is unreadable here."""
    base_id = ref.base_array_id
    assert base_id is not None, "BaseCheck refuses a top-k delta without a base"
    parts = byte_ranges(conn, [(base_id, start, stop)])[base_id]
    blob = b"".join(data for _, _, data in parts)
    if len(blob) != stop - start or (parts and parts[0][1] != start):
        raise _base_unreadable(ref)
    return blob


def _base_unreadable(ref: ArrayRef) -> PayloadCorrupt:
    return PayloadCorrupt(
        f"array {label(ref)} is a top-k delta whose base (array {ref.base_array_id}) "
        "is missing or unreadable"
    )


class BaseCheck:
    """The digest check of the base a top-k delta adds to: feed it the base's bytes
    as they are read, in order and each once (`update`), then `finish`, which raises
    `PayloadCorrupt` naming the delta when they are not the bytes the base was stored
    with (changed in place, or read incompletely). Byte ranges carry no digest of
    their own, so a delta is decoded first and its base judged when it is whole, as
    the delta's own chunks are."""

    def __init__(self, conn: Connection, ref: ArrayRef) -> None:
        if ref.base_array_id is None:
            raise PayloadCorrupt(f"array {label(ref)} is a top-k delta whose base was deleted")
        self.ref = ref
        row = one(conn, "arrays_get_digest", {"array_id": ref.base_array_id})
        if row is None:
            raise _base_unreadable(ref)
        self.digest = bytes(row["digest"])
        self._hasher = arrays.Digest(alg=str(row["digest_alg"]))

    def update(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)

    def finish(self) -> None:
        if self._hasher.digest() != self.digest:
            raise PayloadCorrupt(
                f"array {label(self.ref)} is a top-k delta whose base "
                f"(array {self.ref.base_array_id}) fails its digest check"
            )


def checked_base(conn: Connection, ref: ArrayRef) -> bytes:
    """All the bytes of the base top-k delta `ref` adds to, digest-checked."""
    check = BaseCheck(conn, ref)
    blob = base_bytes(conn, ref, 0, ref.nbytes)
    check.update(blob)
    check.finish()
    return blob


def chunk_batch(conn: Connection, *, array_id: int, first: int, limit: int) -> list[Any]:
    with conn.cursor(binary=True) as cur:
        cur.execute(
            query("array_chunks_list_from"), {"array_id": array_id, "first": first, "limit": limit}
        )
        return cur.fetchall()


Chunks = list[tuple[int, bytes]]
"""`(seq, data)` rows of one array, in order."""


def read_raw(conn: Connection, wanted: Sequence[ArrayRef]) -> dict[int, Chunks]:
    """The stored chunk rows of the referenced arrays, unchecked (one query); for
    `StoredArray(..., chunks=...)`, which checks them when they are used."""
    if not wanted:
        return {}
    out: dict[int, Chunks] = {}
    with conn.cursor(binary=True) as cur:
        for array_id, seq, data in chunk_rows(cur, wanted):
            out.setdefault(array_id, []).append((seq, data))
    return out


def collect(conn: Connection, *, grace: float, limit: int = 1000) -> tuple[int, int]:
    """Link: delete the chunks of up to `limit` arrays nothing live needs (see
    payloads_collect); returns `(arrays, bytes)` collected."""
    with conn.transaction():
        row = one(conn, "arrays_collect", {"grace": grace, "limit": limit})
    assert row is not None
    return int(row["arrays"]), int(row["bytes"])


Part = tuple[int, int, bytes]
"""`(seq, at, data)`: bytes of chunk `seq` starting at byte `at` of the array."""


def byte_ranges(conn: Connection, wanted: Sequence[tuple[int, int, int]]) -> dict[int, list[Part]]:
    """Bytes [start, stop) of each `(array_id, start, stop)`, in one query, as the
    parts of the chunks they overlap, in order, by array id. Unchecked: a missing
    chunk shows as a gap in `at`, which the caller must detect. An array id given
    more than once is read once, for the first range given."""
    first: dict[int, tuple[int, int]] = {}
    for array_id, start, stop in wanted:
        first.setdefault(array_id, (start, stop))
    out: dict[int, list[Part]] = {array_id: [] for array_id in first}
    if not first:
        return out
    params = {
        "array_ids": list(first),
        "starts": [start for start, _ in first.values()],
        "stops": [stop for _, stop in first.values()],
    }
    with conn.cursor(binary=True) as cur:
        for array_id, seq, at, data in cur.execute(query("array_chunks_byte_ranges"), params):
            out[array_id].append((seq, at, data))
    return out
