"""The same slice of many replies' arrays, read for the chunk-wise engine (`robust`).

`ReplySlices(records).open(members, plan)` gives, per member, an iterator of the
values of each block of the plan (`robust.OpenPass`), viewed in place where they
can be (in memory, or in the bytes just read) and converted by the engine. Where a reply's array
comes from decides how it is read:

- stored in the database and not yet read (`Array.stored`, a `StoredArray`): the
  byte range of each block is read for every such array of the pass in one query
  (`storedarray.read_byte_ranges`), the next block's while this one is aggregated, and
  the bytes are hashed in order so the digest is checked at the end of the pass;
- stored with another `ArraySource`: its chunks, in order;
- in memory: sliced.

A reader holds one block's bytes (two while the next is fetched), never a whole
array. Any problem with a reply's bytes (missing or corrupt, digest mismatch,
collected) raises ReplyRejected from that reply's iterator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.app.records import Array, ArrayRecord
from flpg.errors import PayloadCorrupt
from flpg.serverapp.strategy.aggregate import ReplyRejected
from flpg.serverapp.strategy.robust import Plan, coordinate_dtype
from flpg.store.payloads import Part
from flpg.store.storedarray import StoredArray, read_byte_ranges


class _Reader:
    """Consecutive coordinates of one array of one reply, in the array's own real
    dtype (the engine converts them to float64 as it stacks them)."""

    def __init__(self, array: Array, name: str) -> None:
        self.name = name
        self.coord = coordinate_dtype(np.dtype(array.dtype))

    def values(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Coordinates [start, stop): each call continues where the last stopped."""
        raise NotImplementedError

    def finish(self) -> None:
        """ReplyRejected unless every byte was read and checks out."""


class _MemoryReader(_Reader):
    def __init__(self, array: Array, name: str) -> None:
        super().__init__(array, name)
        flat = array.numpy().reshape(-1)
        self.flat = flat.view(self.coord) if flat.size else flat

    def values(self, start: int, stop: int) -> npt.NDArray[Any]:
        return self.flat[start:stop]


class _BufferedReader(_Reader):
    """Bytes arrive in parts (`more`); `values` views those of the next range
    (without copying when one part holds it)."""

    def __init__(self, array: Array, name: str) -> None:
        super().__init__(array, name)
        self.parts: deque[memoryview] = deque()
        self.held = 0
        """Bytes in `parts`."""
        self.consumed = 0
        """Bytes of the array before `parts`."""

    def more(self, stop: int) -> None:
        """Make the parts reach byte `stop` (ReplyRejected if they cannot)."""
        raise NotImplementedError

    def push(self, data: bytes | memoryview) -> None:
        if len(data):
            self.parts.append(memoryview(data).cast("B"))
            self.held += len(data)

    def values(self, start: int, stop: int) -> npt.NDArray[Any]:
        size = self.coord.itemsize
        begin, end = start * size, stop * size
        if begin != self.consumed:
            raise ReplyRejected(f"array {self.name!r} read out of order")
        if end > self.consumed + self.held:
            self.more(end)
        need = end - begin
        taken: list[memoryview] = []
        while need:
            part = self.parts[0]
            if len(part) > need:
                taken.append(part[:need])
                self.parts[0] = part[need:]
            else:
                taken.append(self.parts.popleft())
            need -= len(taken[-1])
        self.held -= end - begin
        self.consumed = end
        data = taken[0] if len(taken) == 1 else b"".join(taken)
        return np.frombuffer(data, dtype=self.coord)


class _StreamReader(_BufferedReader):
    """An `ArraySource`'s chunks, in order."""

    def __init__(self, array: Array, name: str) -> None:
        super().__init__(array, name)
        assert array.source is not None
        self.chunks = array.source.chunks()

    def more(self, stop: int) -> None:
        try:
            while self.consumed + self.held < stop:
                self.push(next(self.chunks))
        except StopIteration:
            raise ReplyRejected(f"array {self.name!r} holds fewer bytes than its shape") from None
        except PayloadCorrupt as exc:
            raise ReplyRejected(str(exc)) from exc

    def finish(self) -> None:
        try:
            for rest in self.chunks:  # the source checks length and digest at its end
                if rest:
                    raise ReplyRejected(f"array {self.name!r} holds more bytes than its shape")
        except PayloadCorrupt as exc:
            raise ReplyRejected(str(exc)) from exc


class _RangeReader(_BufferedReader):
    """A `StoredArray`, fed byte ranges that `_Fetcher` reads for many at once."""

    def __init__(self, array: Array, name: str) -> None:
        super().__init__(array, name)
        assert isinstance(array.source, StoredArray)
        self.source = array.source
        self.hasher = arrays.Digest(alg=self.source.ref.digest_alg)
        self.received = 0
        if self.source.ref.collected:
            self.failed: str | None = f"array {name!r} was collected (FLPG_PAYLOAD_GRACE)"
        elif self.source.ref.codec is not None:
            self.failed = (
                f"array {name!r} is stored compressed ({self.source.ref.codec}), which the "
                "chunk-wise robust strategies cannot slice; run them without flpg.reply-codec"
            )
        else:
            self.failed = None
        self.fetcher: _Fetcher | None = None

    def check(self, parts: list[Part], stop: int) -> list[bytes]:
        """The data of fetched parts that continue the bytes received so far, hashed
        (in the fetcher's thread, in order); a gap fails the reader."""
        out: list[bytes] = []
        for _, at, data in parts:
            if at != self.received or self.received + len(data) > stop:
                self.failed = f"array {self.name!r} is missing bytes from {self.received}"
                return []
            self.hasher.update(data)
            out.append(data)
            self.received += len(data)
        return out

    def more(self, stop: int) -> None:
        if self.fetcher is not None and self.failed is None:
            self.fetcher.fill(stop)
        if self.failed is not None:
            raise ReplyRejected(self.failed)
        if self.received < stop:
            raise ReplyRejected(f"array {self.name!r} is missing bytes from {self.received}")

    def finish(self) -> None:
        ref = self.source.ref
        if self.failed is not None:
            raise ReplyRejected(self.failed)
        if self.received != ref.nbytes:
            raise ReplyRejected(f"array {self.name!r} has {self.received} of {ref.nbytes} bytes")
        if self.hasher.digest() != ref.digest:
            raise ReplyRejected(f"array {self.name!r} fails its digest check")


class _Fetcher:
    """Reads each block's byte ranges of every `_RangeReader` of a pass in one query
    per block, the next block's in a thread while the current one is used."""

    def __init__(self, readers: dict[tuple[int, int], _RangeReader], plan: Plan) -> None:
        self.readers = readers
        self.plan = plan
        self.next_block = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="flpg-slices")
        self.pending: Future[list[tuple[_RangeReader, list[bytes]]]] | None = None
        for reader in readers.values():
            reader.fetcher = self

    def _wanted(self, block: int) -> list[tuple[_RangeReader, int, int]]:
        out = []
        for piece in self.plan[block]:
            for (_, index), reader in self.readers.items():
                if index == piece.array and reader.failed is None:
                    size = reader.coord.itemsize
                    out.append((reader, piece.start * size, piece.stop * size))
        return out

    def _read(self, block: int) -> list[tuple[_RangeReader, list[bytes]]]:
        """One block's bytes per reader, checked and hashed (in the thread)."""
        wanted = self._wanted(block)
        parts = read_byte_ranges([(r.source, start, stop) for r, start, stop in wanted])
        return [(r, r.check(got, stop)) for (r, _, stop), got in zip(wanted, parts, strict=True)]

    def fill(self, stop: int) -> None:
        """Fetch blocks until the asking reader's bytes reach `stop` (or none are left)."""
        del stop  # blocks are fetched in plan order; every reader advances together
        if self.next_block >= len(self.plan):
            return
        pending = self.pending or self.pool.submit(self._read, self.next_block)
        self.next_block += 1
        self.pending = (
            self.pool.submit(self._read, self.next_block)
            if self.next_block < len(self.plan)
            else None
        )
        for reader, datas in pending.result():
            for data in datas:
                reader.push(data)

    def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
        self.pool.shutdown(wait=True)


def _reader(array: Array, name: str) -> _Reader:
    if array.in_memory or array.source is None:
        return _MemoryReader(array, name)
    if isinstance(array.source, StoredArray):
        return _RangeReader(array, name)
    return _StreamReader(array, name)


class ReplySlices:
    """The arrays of replies' records (all checked against one model: same names,
    dtypes up to byte order, shapes), read slice by slice."""

    def __init__(self, records: Sequence[ArrayRecord]) -> None:
        self.records = list(records)

    def open(self, members: Sequence[int], plan: Plan) -> list[Iterator[npt.NDArray[Any]]]:
        """One iterator per member (an index into the records) over the plan's blocks."""
        readers: dict[tuple[int, int], _Reader] = {}
        for member in members:
            for index, (name, array) in enumerate(self.records[member].items()):
                readers[(member, index)] = _reader(array, name)
        ranged = {key: r for key, r in readers.items() if isinstance(r, _RangeReader)}
        fetcher = _Fetcher(ranged, plan) if ranged else None
        return _Pass((self._member(member, plan, readers) for member in members), fetcher)

    def _member(
        self, member: int, plan: Plan, readers: dict[tuple[int, int], _Reader]
    ) -> Iterator[npt.NDArray[Any]]:
        mine = [readers[(member, index)] for index in range(len(self.records[member]))]
        for block in plan:
            parts = [mine[p.array].values(p.start, p.stop) for p in block]
            yield parts[0] if len(parts) == 1 else np.concatenate(parts, dtype=np.float64)
        for reader in mine:
            reader.finish()


class _Pass(list[Iterator[npt.NDArray[Any]]]):
    """The members' iterators of one pass; `close` (the engine calls it when the pass
    ends or is abandoned) stops the fetcher's thread."""

    def __init__(
        self, iterators: Iterable[Iterator[npt.NDArray[Any]]], fetcher: _Fetcher | None
    ) -> None:
        super().__init__(iterators)
        self.fetcher = fetcher

    def close(self) -> None:
        if self.fetcher is not None:
            self.fetcher.close()


def array_values(array: Array) -> npt.NDArray[Any]:
    """An array's coordinates as float64 (reads a stored array whole; for tests)."""
    flat = array.numpy().reshape(-1)
    return np.asarray(flat.view(coordinate_dtype(flat.dtype)), dtype=np.float64)
