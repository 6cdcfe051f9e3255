"""The one place where numpy arrays become bytes and bytes become numpy arrays.

Wire format: the raw C-order element bytes of the array in its own byte order,
plus its stored dtype string (`dtype_str`: byte order explicit, '<f4', '>f4',
'|u1') and the shape. No pickle, no headers. Apps see dtypes spelled as numpy's
`str(dtype)` ('float32', '>f4' for a big-endian one; `dtype_name`), as Flower's do.

Supported dtypes: bool, signed and unsigned integers, float16/32/64 and
complex64/128. Everything else (object, structured/void, str/bytes,
datetime/timedelta, the platform-dependent longdouble) is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from flpg.errors import PayloadCorrupt, RecordError

__all__ = [
    "DEFAULT_DIGEST_ALG",
    "DIGEST_ALGS",
    "ArrayAssembler",
    "Digest",
    "EncodedArray",
    "check_dtype",
    "decode",
    "digest",
    "dtype_name",
    "dtype_str",
    "encode",
    "iter_chunks",
    "parse_dtype",
    "same_dtype",
    "stored_chunks",
    "stored_digest",
    "to_storable",
]

# kind -> itemsizes that are stored. float128/complex256 (x86 longdouble) are
# left out on purpose: their byte layout differs between platforms.
_ITEMSIZES: dict[str, frozenset[int]] = {
    "b": frozenset({1}),
    "i": frozenset({1, 2, 4, 8}),
    "u": frozenset({1, 2, 4, 8}),
    "f": frozenset({2, 4, 8}),
    "c": frozenset({8, 16}),
}

_DIGEST_SIZE = 16


def _is_supported(dtype: np.dtype[Any]) -> bool:
    sizes = _ITEMSIZES.get(dtype.kind)
    return sizes is not None and dtype.itemsize in sizes and dtype.fields is None


def check_dtype(dtype: np.dtype[Any], name: str) -> None:
    """Raise `RecordError` naming the array unless `dtype` can be stored."""
    if not _is_supported(dtype):
        raise RecordError(
            f"array {name!r} has dtype {dtype}, which cannot be stored; use a numeric or bool dtype"
        )


def dtype_str(dtype: np.dtype[Any]) -> str:
    """The stored dtype string, byte order explicit: '<f4', '>f4', '|b1', '|u1'
    (the `arrays.dtype` column; native order is written out, never '=')."""
    return dtype.str


def dtype_name(dtype: np.dtype[Any]) -> str:
    """The dtype as apps see it, spelled as Flower's `Array.dtype` (numpy's
    `str(dtype)`): 'float32', 'bool', 'uint8', and '>f4' for a big-endian float32."""
    return str(dtype)


def parse_dtype(dtype: str, name: str) -> np.dtype[Any]:
    """A dtype string (stored '<f4'/'>f4' or Flower's 'float32') as a dtype in that
    byte order; `PayloadCorrupt` if unreadable or not storable."""
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise PayloadCorrupt(f"array {name!r} has an unreadable dtype {dtype!r}") from exc
    if not _is_supported(parsed):
        raise PayloadCorrupt(f"array {name!r} has unsupported stored dtype {dtype!r}")
    return parsed


def same_dtype(a: str | np.dtype[Any], b: str | np.dtype[Any]) -> bool:
    """Whether two dtypes hold the same values, whatever their byte order."""
    return np.dtype(a).newbyteorder("<") == np.dtype(b).newbyteorder("<")


def to_storable(arr: npt.NDArray[Any], name: str) -> npt.NDArray[Any]:
    """Return `arr` as a C-contiguous array of the same dtype (byte order kept).

    Validates the dtype (`RecordError`). Returns `arr` itself when it already
    qualifies; copies only if it is not C-contiguous.
    """
    check_dtype(arr.dtype, name)
    if not arr.flags.c_contiguous:
        # astype (unlike ascontiguousarray) keeps 0-d arrays 0-d.
        return arr.astype(arr.dtype, order="C", copy=True)
    return arr


def _byte_view(arr: npt.NDArray[Any]) -> memoryview:
    """Read-only flat 'B' memoryview over a C-contiguous array's buffer (no copy)."""
    # reshape(-1) is a view for C-contiguous input and turns 0-d into (1,);
    # viewing as uint8 handles empty arrays and every element format.
    return arr.reshape(-1).view(np.uint8).data.toreadonly()


@dataclass(frozen=True)
class EncodedArray:
    """An array as stored: dtype string (`dtype_str`), shape, and flat bytes (format 'B').

    `data` is read-only but may share memory with the encoded array: do not
    mutate the array while `data` is in use. A compressed array (`codec` set; see
    flpg/app/compressed.py) is stored as `chunks`, one encoded chunk per `chunk_size`
    bytes of `data`, instead of `data` itself.
    """

    dtype: str
    shape: tuple[int, ...]
    data: memoryview
    nbytes: int
    codec: str | None = None
    chunks: tuple[bytes, ...] | None = None
    chunk_size: int | None = None
    base_array_id: int | None = None
    """A top-k delta's base: the stored array the reader adds it to."""


def stored_chunks(enc: EncodedArray, chunk_size: int) -> Iterator[bytes | memoryview]:
    """The chunks `enc` is stored as: its encoded chunks, or `data` cut every
    `chunk_size` bytes (zero-copy)."""
    if enc.chunks is not None:
        yield from enc.chunks
    else:
        yield from iter_chunks(enc.data, chunk_size)


def stored_digest(enc: EncodedArray, chunk_size: int) -> bytes:
    """The payload digest (DEFAULT_DIGEST_ALG) of the bytes `enc` is stored as."""
    hasher = Digest()
    for chunk in stored_chunks(enc, chunk_size):
        hasher.update(chunk)
    return hasher.digest()


def encode(arr: npt.NDArray[Any], name: str) -> EncodedArray:
    """Encode `arr` as C-order bytes in its own byte order.

    Zero-copy (`data` views `arr`'s buffer) when `arr` is already C-contiguous;
    otherwise one copy. `RecordError` for unsupported dtypes.
    """
    storable = to_storable(arr, name)
    data = _byte_view(storable)
    return EncodedArray(
        dtype=dtype_str(storable.dtype),
        shape=tuple(int(n) for n in storable.shape),
        data=data,
        nbytes=data.nbytes,
    )


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


DIGEST_ALGS = ("sha256-128", "xxh3-128")
"""Payload digest algorithms (`arrays.digest_alg`; the database checks the same list)."""

DEFAULT_DIGEST_ALG = "xxh3-128"
"""What new payloads are hashed with: XXH3-128, 23 GB/s here against SHA-256's 1.8 GB/s
(with SHA-NI). A digest guards against corruption and in-place changes of stored bytes
(which only the tables' owner can make), not against a writer, who chooses its own."""


class Digest:
    """Incremental 16-byte payload digest: XXH3-128 (default) or, for payloads written
    before migration 0013, SHA-256 truncated to 16 bytes. `PayloadCorrupt` for an
    unknown algorithm name."""

    def __init__(self, data: bytes | memoryview = b"", alg: str = DEFAULT_DIGEST_ALG) -> None:
        self._hash: Any
        if alg == "xxh3-128":
            self._hash = xxhash.xxh3_128()
        elif alg == "sha256-128":
            self._hash = hashlib.sha256()
        else:
            raise PayloadCorrupt(f"unknown payload digest algorithm {alg!r}")
        self.update(data)

    def update(self, data: bytes | memoryview) -> None:
        """Hash more bytes (in place, no copy)."""
        view = _as_bytes_view(data)
        if view.nbytes:
            self._hash.update(view)

    def digest(self) -> bytes:
        """The 16-byte digest of everything hashed so far."""
        return bytes(self._hash.digest()[:_DIGEST_SIZE])


def digest(data: bytes | memoryview, alg: str = DEFAULT_DIGEST_ALG) -> bytes:
    """Return the 16-byte payload digest of `data` (see `Digest`; hashed in place)."""
    return Digest(data, alg).digest()


def iter_chunks(data: bytes | memoryview, chunk_size: int) -> Iterator[memoryview]:
    """Yield consecutive zero-copy slices of at most `chunk_size` bytes.

    An empty buffer yields nothing. `ValueError` if `chunk_size <= 0`.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    view = _as_bytes_view(data)
    for start in range(0, view.nbytes, chunk_size):
        yield view[start : start + chunk_size]


class ArrayAssembler:
    """Rebuild one array from its chunks with a single copy.

    Preallocates the final array; `add` copies each chunk into place in order;
    `finish` returns the (writeable) array. `PayloadCorrupt` (naming the array)
    if the metadata is inconsistent, a chunk overflows, or bytes are missing.
    """

    def __init__(self, dtype: str, shape: tuple[int, ...], nbytes: int, name: str) -> None:
        self.name = name
        parsed = parse_dtype(dtype, name)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
            raise PayloadCorrupt(f"array {name!r} has an invalid stored shape {shape!r}")
        expected = math.prod(shape) * parsed.itemsize
        if nbytes != expected:
            raise PayloadCorrupt(
                f"array {name!r} says {nbytes} bytes, but dtype {dtype} and "
                f"shape {shape} need {expected}"
            )
        self.nbytes = nbytes
        self._array: npt.NDArray[Any] = np.empty(shape, dtype=parsed)
        self._bytes: npt.NDArray[np.uint8] = self._array.reshape(-1).view(np.uint8)
        self._pos = 0
        self._finished = False

    @property
    def received(self) -> int:
        """Number of bytes added so far."""
        return self._pos

    def add(self, chunk: bytes | bytearray | memoryview) -> None:
        """Copy `chunk` into place after the bytes added so far."""
        if self._finished:
            raise RuntimeError(f"array {self.name!r} is already assembled")
        view = _as_bytes_view(chunk)
        size = view.nbytes
        end = self._pos + size
        if end > self.nbytes:
            raise PayloadCorrupt(
                f"array {self.name!r} payload is longer than its {self.nbytes} bytes"
            )
        if size:
            self._bytes[self._pos : end] = np.frombuffer(view, dtype=np.uint8)
        self._pos = end

    def finish(self) -> npt.NDArray[Any]:
        """Return the assembled array; `PayloadCorrupt` if bytes are missing."""
        if self._pos != self.nbytes:
            raise PayloadCorrupt(
                f"array {self.name!r} payload has {self._pos} of {self.nbytes} bytes"
            )
        self._finished = True
        return self._array


def decode(
    dtype: str, shape: tuple[int, ...], data: bytes | memoryview, name: str
) -> npt.NDArray[Any]:
    """Return a new writeable array from stored bytes (one copy).

    `PayloadCorrupt` if the length does not match dtype and shape.
    """
    view = _as_bytes_view(data)
    itemsize = parse_dtype(dtype, name).itemsize
    assembler = ArrayAssembler(dtype, shape, math.prod(shape) * itemsize, name)
    assembler.add(view)
    return assembler.finish()
