"""Stored arrays read lazily: `StoredArray`, a stored array read through a session
chunk batch by chunk batch (a prefetching reader thread), and `read_byte_ranges`, the
same byte range of many stored arrays for the chunk-wise robust strategies."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from flpg.app import arrays
from flpg.errors import PayloadCorrupt
from flpg.store.db import Connection, Session
from flpg.store.payloads import (
    ArrayRef,
    BaseCheck,
    Chunks,
    Part,
    base_bytes,
    byte_ranges,
    check_readable,
    chunk_batch,
    decoder_for,
    label,
)

__all__ = ["StoredArray", "read_byte_ranges"]


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
        assembler = arrays.ArrayAssembler(ref.dtype, ref.shape, ref.nbytes, label(ref))
        for data in self.chunks():
            assembler.add(data)
        return assembler.finish()

    def chunks(self) -> Iterator[bytes]:
        """Yield the stored bytes in order; `PayloadCorrupt` on a missing chunk, a
        length mismatch, or (after the last chunk) a digest mismatch."""
        ref = self.ref
        check_readable(ref)
        hasher = arrays.Digest(alg=ref.digest_alg)
        decoder = decoder_for(ref)
        base_check = (  # before the reader thread starts using the session
            self._session.call(partial(BaseCheck, ref=ref))
            if decoder is not None and decoder.needs_base
            else None
        )
        seq = total = 0
        for batch, base in self._batches():
            if base_check is not None and base is not None:
                base_check.update(base)
            offset = (
                0
                if base is None or decoder is None
                else decoder.base_range(batch[0][0], batch[0][0])[0]
            )
            for got, stored in batch:
                if got != seq:
                    raise PayloadCorrupt(f"array {label(ref)} is missing chunk {seq}")
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
                        f"array {label(ref)} payload is longer than its {ref.nbytes} bytes"
                    )
                seq += 1
                yield data
        if seq < ref.n_chunks:
            raise PayloadCorrupt(f"array {label(ref)} is missing chunk {seq}")
        if total != ref.nbytes:
            raise PayloadCorrupt(f"array {label(ref)} payload has {total} of {ref.nbytes} bytes")
        if hasher.digest() != ref.digest:
            raise PayloadCorrupt(f"array {label(ref)} fails its digest check")
        if base_check is not None:
            base_check.finish()

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
            batch: Chunks = chunk_batch(conn, array_id=self.array_id, first=first, limit=self.BATCH)
            return batch, self._base_of(batch, conn)

        found: tuple[Chunks, memoryview | None] = self._session.call(fetch)
        return found

    def _base_of(self, batch: Chunks, conn: Connection) -> memoryview | None:
        """The base bytes `batch`'s chunks add to, if this array is a top-k delta."""
        decoder = decoder_for(self.ref)
        if decoder is None or not decoder.needs_base or not batch:
            return None
        start, stop = decoder.base_range(batch[0][0], batch[-1][0])
        return memoryview(base_bytes(conn, self.ref, start, stop))


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
