"""Array payloads: chunked bytea, written once, streamed back into numpy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from flpg.app import arrays
from flpg.app.compressed import Decoder
from flpg.errors import PayloadCorrupt
from flpg.store._exec import one, rows
from flpg.store.db import Connection, Session
from flpg.store.sql import query

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


def _decoder(ref: ArrayRef) -> Decoder | None:
    """The decoder of a compressed array's stored chunks (None: they are raw)."""
    if ref.codec is None:
        return None
    return Decoder(ref.codec, ref.dtype, ref.shape, ref.chunk_size, _label(ref))


def _label(ref: ArrayRef) -> str:
    owner = "the checkpoint" if ref.message_id is None else f"message {ref.message_id}"
    return f"{ref.record_name}[{ref.array_name!r}] of {owner}"


def _check_not_collected(ref: ArrayRef) -> None:
    if ref.lost:
        raise PayloadCorrupt(
            f"array {_label(ref)} was lost: PostgreSQL crashed, and round-transient "
            "payloads are not WAL-logged (the run restarts from its last checkpoint)"
        )
    if ref.collected:
        raise PayloadCorrupt(
            f"array {_label(ref)} was collected: its message ended more than the "
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
        _check_not_collected(ref)
    assemblers = {
        i: arrays.ArrayAssembler(r.dtype, r.shape, r.nbytes, _label(r)) for i, r in by_id.items()
    }
    hashers = {i: arrays.Digest(alg=r.digest_alg) for i, r in by_id.items()}
    decoders = {i: _decoder(r) for i, r in by_id.items()}
    bases = {  # top-k deltas: their bases' bytes, read before the chunks stream
        i: _base_bytes(conn, by_id[i], 0, by_id[i].nbytes)
        for i, d in decoders.items()
        if d is not None and d.needs_base
    }
    expected_seq = dict.fromkeys(by_id, 0)
    with conn.cursor(binary=True) as cur:
        for array_id, seq, data in cur.stream(
            query("array_chunks_stream"), {"array_ids": sorted(by_id)}
        ):
            if seq != expected_seq[array_id]:
                raise PayloadCorrupt(
                    f"array {_label(by_id[array_id])} is missing chunk {expected_seq[array_id]}"
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
                f"array {_label(ref)} has {expected_seq[array_id]} of {ref.n_chunks} chunks"
            )
        arr = assemblers[array_id].finish()
        if hashers[array_id].digest() != ref.digest:
            raise PayloadCorrupt(f"array {_label(ref)} fails its digest check")
        out[array_id] = arr
    return out


def _base_bytes(conn: Connection, ref: ArrayRef, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the base a top-k delta adds to (one ranged query);
    `PayloadCorrupt` naming the array when its base is gone or unreadable here."""
    if ref.base_array_id is None:
        raise PayloadCorrupt(f"array {_label(ref)} is a top-k delta whose base was deleted")
    parts = byte_ranges(conn, [(ref.base_array_id, start, stop)])[ref.base_array_id]
    blob = b"".join(data for _, _, data in parts)
    if len(blob) != stop - start or (parts and parts[0][1] != start):
        raise PayloadCorrupt(
            f"array {_label(ref)} is a top-k delta whose base (array {ref.base_array_id}) "
            "is missing or unreadable"
        )
    return blob


def _chunk_batch(conn: Connection, *, array_id: int, first: int, limit: int) -> list[Any]:
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
        for array_id, seq, data in cur.stream(
            query("array_chunks_stream"), {"array_ids": sorted({r.array_id for r in wanted})}
        ):
            out.setdefault(array_id, []).append((seq, data))
    return out


class StoredArray:
    """An `ArraySource` for one stored array, read through the ServerApp's session.

    Reads retry after a lost connection (they only read), so a database restart
    in the middle of a streamed aggregation resumes at the next chunk. `chunks`,
    when given, are the array's rows already read (`read_raw`): no query is needed
    for them, and they are checked like fetched ones.
    """

    BATCH = 16
    """Chunks fetched per query by `chunks()` (16 MiB at the default chunk size)."""

    def __init__(
        self, session: Session, run_id: int, ref: ArrayRef, chunks: Chunks | None = None
    ) -> None:
        self._session = session
        self.run_id = run_id
        self.array_id = ref.array_id
        self.digest = ref.digest
        self.digest_alg = ref.digest_alg
        self.codec = ref.codec
        self.ref = ref
        self._read = chunks

    def load(self) -> np.ndarray[Any, Any]:
        """The whole array (`PayloadCorrupt` naming it and its message if unreadable)."""
        ref = self.ref
        assembler = arrays.ArrayAssembler(ref.dtype, ref.shape, ref.nbytes, _label(ref))
        for data in self.chunks():
            assembler.add(data)
        return assembler.finish()

    def chunks(self) -> Iterator[bytes]:
        """Yield the stored bytes in order; `PayloadCorrupt` on a missing chunk, a
        length mismatch, or (after the last chunk) a digest mismatch."""
        ref = self.ref
        _check_not_collected(ref)
        hasher = arrays.Digest(alg=ref.digest_alg)
        decoder = _decoder(ref)
        seq = total = 0
        for batch, base in self._batches():
            offset = (
                0
                if base is None or decoder is None
                else decoder.base_range(batch[0][0], batch[0][0])[0]
            )
            for got, stored in batch:
                if got != seq:
                    raise PayloadCorrupt(f"array {_label(ref)} is missing chunk {seq}")
                hasher.update(stored)
                if decoder is None:
                    data = stored
                elif base is None:
                    data = decoder.decode(seq, stored)
                else:
                    start, stop = decoder.base_range(seq, seq)
                    data = decoder.decode(seq, stored, base[start - offset : stop - offset])
                total += len(data)
                if total > ref.nbytes:
                    raise PayloadCorrupt(
                        f"array {_label(ref)} payload is longer than its {ref.nbytes} bytes"
                    )
                seq += 1
                yield data
        if seq < ref.n_chunks:
            raise PayloadCorrupt(f"array {_label(ref)} is missing chunk {seq}")
        if total != ref.nbytes:
            raise PayloadCorrupt(f"array {_label(ref)} payload has {total} of {ref.nbytes} bytes")
        if hasher.digest() != ref.digest:
            raise PayloadCorrupt(f"array {_label(ref)} fails its digest check")

    def _batches(self) -> Iterator[tuple[Chunks, memoryview | None]]:
        """The array's rows in batches, each with the bytes of the base its chunks add
        to (a top-k delta; else None); ends early (the caller finds the gap) at a
        missing chunk.

        A reader thread fetches the next batch while the caller hashes and uses this
        one: psycopg, hashlib and numpy release the GIL, so on two cores reading and
        aggregating overlap. The caller must not use the session meanwhile.
        """
        n_chunks = self.ref.n_chunks
        if self._read is not None:
            yield self._read, self._session.call(partial(self._base_of, self._read))
            return
        if not n_chunks:
            return
        with ThreadPoolExecutor(1, thread_name_prefix=f"flpg-read-{self.array_id}") as reader:
            pending: Future[tuple[Chunks, memoryview | None]] | None = reader.submit(self._fetch, 0)
            while pending is not None:
                batch, base = pending.result()
                following = batch[-1][0] + 1 if batch else n_chunks
                complete = len(batch) == self.BATCH and following == batch[0][0] + self.BATCH
                pending = (
                    reader.submit(self._fetch, following)
                    if complete and following < n_chunks
                    else None
                )
                yield batch, base

    def _fetch(self, first: int) -> tuple[Chunks, memoryview | None]:
        """The next BATCH rows from chunk `first` on, with their base's bytes (top-k),
        in one session call (retried after a lost connection)."""

        def fetch(conn: Connection) -> tuple[Chunks, memoryview | None]:
            batch: Chunks = _chunk_batch(
                conn, array_id=self.array_id, first=first, limit=self.BATCH
            )
            return batch, self._base_of(batch, conn)

        found: tuple[Chunks, memoryview | None] = self._session.call(fetch)
        return found

    def _base_of(self, batch: Chunks, conn: Connection) -> memoryview | None:
        """The base bytes `batch`'s chunks add to, if this array is a top-k delta."""
        decoder = _decoder(self.ref)
        if decoder is None or not decoder.needs_base or not batch:
            return None
        start, stop = decoder.base_range(batch[0][0], batch[-1][0])
        return memoryview(_base_bytes(conn, self.ref, start, stop))


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


def _parts_in_memory(rows: Chunks, start: int, stop: int) -> list[Part]:
    """The parts of already-read chunk rows that hold bytes [start, stop)."""
    parts: list[Part] = []
    at = 0
    for seq, data in rows:
        lo, hi = max(start - at, 0), min(stop - at, len(data))
        if lo < hi:
            parts.append((seq, at + lo, bytes(data[lo:hi])))
        at += len(data)
    return parts


def read_byte_ranges(wanted: Sequence[tuple[StoredArray, int, int]]) -> list[list[Part]]:
    """Bytes [start, stop) of each stored array, as `byte_ranges` gives them, in the
    order asked: one query per session for all arrays whose rows were not read with
    their message (those are sliced in memory), retried after a lost connection.
    Unchecked, as `byte_ranges`; a collected array yields no parts."""
    out: list[list[Part]] = [[] for _ in wanted]
    by_session: dict[int, tuple[Session, list[int]]] = {}
    for index, (source, start, stop) in enumerate(wanted):
        if source._read is not None:
            out[index] = _parts_in_memory(source._read, start, stop)
        elif not source.ref.collected:
            by_session.setdefault(id(source._session), (source._session, []))[1].append(index)
    for session, indices in by_session.values():
        asked = [(wanted[i][0].array_id, wanted[i][1], wanted[i][2]) for i in indices]
        found: dict[int, list[Part]] = session.call(partial(byte_ranges, wanted=asked))
        for index in indices:
            out[index] = found[wanted[index][0].array_id]
    return out
