"""Decoding compressed chunks (the layouts are in codecs.py's docstring): stored bytes
back into an array's logical elements, checking everything a damaged or hostile
chunk could hold."""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from flpg.app.codecs import (
    F2,
    F4,
    F4_MAX,
    I1,
    U2,
    U4,
    Codec,
    byte_view,
    elements_per_chunk,
    encoded_chunk_size,
    work_dtype,
)
from flpg.errors import PayloadCorrupt

__all__ = ["ChunkDecoder"]


class ChunkDecoder:
    """Decodes the stored chunks of one compressed array of logical `dtype` and
    `n_elements`, written with `chunk_size`, into logical elements.

    Every problem is a one-line `PayloadCorrupt` naming the array (`name`): stored
    metadata that cannot hold a compressed array (here), and in `decode` a chunk
    number past the end, an encoded length that does not fit the chunk, an int8
    scale that is NaN, Inf or negative or a value of -128, a topk k above the
    chunk's element count, indices out of range or not strictly increasing,
    non-finite topk values, and a missing or wrong-length base chunk.
    """

    def __init__(
        self, codec: Codec, dtype: npt.DTypeLike, n_elements: int, chunk_size: int, name: str
    ) -> None:
        self.codec = codec
        self.name = name
        try:
            self.dtype: np.dtype[Any] = np.dtype(dtype)
        except TypeError:
            raise PayloadCorrupt(f"array {name!r} has an unreadable dtype {dtype!r}") from None
        if not codec.applies_to(self.dtype):
            raise PayloadCorrupt(f"array {name!r} has codec {codec.spec} but dtype {self.dtype}")
        if n_elements < 0:
            raise PayloadCorrupt(f"array {name!r} has {n_elements} elements")
        try:
            self.per_chunk = elements_per_chunk(chunk_size, self.dtype.itemsize)
        except ValueError as exc:
            raise PayloadCorrupt(f"array {name!r}: {exc}") from None
        self.n_elements = n_elements
        self.n_chunks = -(-n_elements // self.per_chunk)
        self._work = work_dtype(self.dtype)

    def chunk_bounds(self, seq: int) -> tuple[int, int]:
        """The element range [start, stop) of chunk `seq`; `PayloadCorrupt` past the end."""
        if not 0 <= seq < self.n_chunks:
            raise PayloadCorrupt(
                f"array {self.name!r} has {self.n_chunks} chunks, not a chunk number {seq}"
            )
        start = seq * self.per_chunk
        return start, min(start + self.per_chunk, self.n_elements)

    def decode(
        self,
        seq: int,
        encoded: bytes | bytearray | memoryview,
        base_chunk: bytes | bytearray | memoryview | None = None,
    ) -> npt.NDArray[Any]:
        """Chunk `seq`'s logical elements: a new 1-d C-contiguous array of the logical
        dtype (`.view(np.uint8)` gives its raw bytes). topk needs `base_chunk`: the
        same element range of the base array, as raw bytes of the logical dtype."""
        start, stop = self.chunk_bounds(seq)
        n = stop - start
        data = byte_view(encoded)
        name = self.codec.name
        if name == "topk":
            return self._topk(seq, n, data, base_chunk)
        size = encoded_chunk_size(self.codec, n)
        if data.nbytes != size:
            self._corrupt(seq, f"has {data.nbytes} bytes, {name} needs {size} for {n} elements")
        if name == "fp16":
            return np.frombuffer(data, dtype=F2).astype(self.dtype)
        if name == "bf16":
            bits = np.frombuffer(data, dtype=U2).astype(U4)
            bits <<= 16
            return bits.view(F4).astype(self.dtype, copy=False)
        return self._int8(seq, data)

    def _corrupt(self, seq: int, problem: str) -> NoReturn:
        raise PayloadCorrupt(f"array {self.name!r} chunk {seq} ({self.codec.spec}) {problem}")

    def _int8(self, seq: int, data: memoryview) -> npt.NDArray[Any]:
        scale = float(np.frombuffer(data, dtype=F4, count=1)[0])
        if not 0.0 <= scale <= F4_MAX:
            self._corrupt(seq, f"has scale {scale}, not a finite number >= 0")
        q = np.frombuffer(data, dtype=I1, offset=4)
        if q.size and int(q.min()) < -127:
            self._corrupt(seq, "has the value -128, outside [-127, 127]")
        out = q.astype(self._work)
        out *= self._work.type(scale)
        return out.astype(self.dtype, copy=False)

    def _topk(
        self,
        seq: int,
        n: int,
        data: memoryview,
        base_chunk: bytes | bytearray | memoryview | None,
    ) -> npt.NDArray[Any]:
        if data.nbytes < 4:
            self._corrupt(seq, f"has {data.nbytes} bytes, too short for its header")
        k = int(np.frombuffer(data, dtype=U4, count=1)[0])
        if k > n:
            self._corrupt(seq, f"says k = {k}, more than its {n} elements")
        if data.nbytes != 4 + 8 * k:
            self._corrupt(seq, f"has {data.nbytes} bytes, k = {k} needs {4 + 8 * k}")
        idx = np.frombuffer(data, dtype=U4, count=k, offset=4)
        values = np.frombuffer(data, dtype=F4, count=k, offset=4 + 4 * k)
        if k and int(idx[-1]) >= n:
            self._corrupt(seq, f"has index {int(idx[-1])}, out of range for {n} elements")
        if k > 1 and not (idx[1:] > idx[:-1]).all():
            self._corrupt(seq, "has indices that are not strictly increasing")
        if not np.isfinite(values).all():
            self._corrupt(seq, "has a value that is NaN or Inf")
        if base_chunk is None:
            self._corrupt(seq, "needs its base chunk, and none was given")
        base = byte_view(base_chunk)
        if base.nbytes != n * self.dtype.itemsize:
            need = n * self.dtype.itemsize
            self._corrupt(seq, f"has a base chunk of {base.nbytes} bytes, not {need}")
        out = np.frombuffer(base, dtype=self.dtype).copy()
        with np.errstate(over="ignore"):
            out[idx] = out[idx] + values
        return out
