"""`Array`: one ndarray as a record holds it, in memory or stored in the database.

`flpg.app.arrays` converts arrays to and from bytes; this module holds the value
type apps see (Flower's `flwr.app.Array`) and the `ArraySource` a stored array
reads its bytes from.

Like Flower's, an `Array` is built from an ndarray, a PyTorch tensor, or explicit
`dtype`, `shape`, `stype` and `data`; `stype` is always `NUMPY_STYPE` and `data`
the array as `np.save` writes it (built on demand: flpg stores raw element bytes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.app.tensors import is_tensor, tensor_to_numpy
from flpg.errors import RecordError

__all__ = ["NUMPY_STYPE", "Array", "ArraySource", "npy_header"]

_UNNAMED = "<unnamed>"

NUMPY_STYPE = "numpy.ndarray"
"""Flower's serialisation type for `np.save` bytes (`flwr.common.constant.SType.NUMPY`)."""

_INIT_ERROR = (
    "Array takes a numpy ndarray, a PyTorch tensor, or explicit dtype, shape, stype and data values"
)


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The header `np.save` writes before the bytes of a C-order array."""
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, fields)
    except ValueError:  # a header over 64 KiB needs format 2.0, as np.save picks it
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, fields)
    return out.getvalue()


def _input_value(
    args: tuple[Any, ...], fields: list[Any], ndarray: Any, tensor: Any
) -> tuple[Any, list[Any] | None]:
    """`(value, None)` for the one ndarray/tensor argument, or `(None, fields)` with
    `fields` filled in from `args`; `RecordError` for any other combination."""
    given = [value for value in (ndarray, tensor) if value is not None]
    if given:
        if args or len(given) > 1 or any(f is not None for f in fields):
            raise RecordError(_INIT_ERROR)
        return given[0], None
    if len(args) == 1 and all(f is None for f in fields):
        return args[0], None
    if len(args) > 4:
        raise RecordError(_INIT_ERROR)
    merged = list(args) + [None] * (4 - len(args))
    for index, value in enumerate(fields):
        if value is not None:
            if merged[index] is not None:
                raise RecordError(_INIT_ERROR)
            merged[index] = value
    if any(value is None for value in merged):
        raise RecordError(_INIT_ERROR)
    return None, merged


def _from_fields(fields: list[Any], name: str) -> npt.NDArray[Any]:
    """The ndarray that explicit `[dtype, shape, stype, data]` describe."""
    dtype, shape, stype, data = fields
    if not (
        isinstance(dtype, str)
        and isinstance(shape, tuple | list)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        and isinstance(stype, str)
        and isinstance(data, bytes | bytearray | memoryview)
    ):
        raise RecordError(f"{_INIT_ERROR}; array {name!r} got fields of the wrong types")
    if stype != NUMPY_STYPE:
        raise RecordError(
            f"array {name!r} has stype {stype!r}; only {NUMPY_STYPE!r} (np.save bytes) is supported"
        )
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RecordError(f"array {name!r}: data is not np.save bytes ({exc})") from exc
    if not isinstance(loaded, np.ndarray):
        raise RecordError(f"array {name!r}: data is not one array as np.save writes it")
    try:
        same_dtype = arrays.same_dtype(dtype, loaded.dtype)
    except TypeError:
        same_dtype = False
    if not same_dtype or tuple(shape) != loaded.shape:
        raise RecordError(
            f"array {name!r}: dtype {dtype!r} and shape {tuple(shape)} do not match "
            f"its data ({arrays.dtype_name(loaded.dtype)}, {loaded.shape})"
        )
    return loaded


class ArraySource(Protocol):
    """Where a stored array's bytes live until they are needed (see `Array.stored`)."""

    run_id: int
    array_id: int
    digest: bytes
    """The stored bytes' digest (`arrays.digest`)."""
    digest_alg: str
    """Its algorithm (`arrays.DIGEST_ALGS`)."""
    codec: str | None
    """None when the stored bytes are the array's raw bytes (else they are encoded)."""

    def load(self) -> npt.NDArray[Any]:
        """The whole array, newly read (one copy of its bytes)."""

    def chunks(self) -> Iterator[bytes]:
        """The array's bytes in order, a chunk at a time; raises `PayloadCorrupt` (after
        the last chunk at the latest) if the stored bytes are missing or corrupt."""


class Array:
    """One C-contiguous ndarray with a storable dtype, in its own byte order.

    Wraps the given array without copying when it already is C-contiguous (so
    later mutation of that array is visible here); otherwise keeps a C-order copy.
    `RecordError` for unsupported dtypes or non-arrays. `dtype` is spelled as
    Flower spells it (`str(ndarray.dtype)`: 'float32', '>f4' if big-endian); the
    database keeps the byte order explicit ('<f4'), and a big-endian array comes
    back from it big-endian.

    An array received by `Grid.receive` or saved by the ServerApp is *stored*: only
    its dtype and shape are in memory, `numpy()` reads it on first use, and a
    streaming aggregator can read it chunk by chunk (`source`) instead.
    """

    __slots__ = ("_array", "_dtype", "_shape", "_source")

    def __init__(
        self,
        *args: Any,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
        stype: str | None = None,
        data: bytes | None = None,
        ndarray: npt.NDArray[Any] | None = None,
        torch_tensor: Any = None,
        name: str = _UNNAMED,
    ) -> None:
        """`Array(ndarray)`, `Array(tensor)` or `Array(dtype, shape, stype, data)`
        (positional or keyword, as in Flower). A tensor is copied (detached, on the
        CPU); explicit fields must describe their `data`, else `RecordError`."""
        value, fields = _input_value(args, [dtype, shape, stype, data], ndarray, torch_tensor)
        if fields is not None:
            value = _from_fields(fields, name)
        elif is_tensor(value):
            value = tensor_to_numpy(value)
        if not isinstance(value, np.ndarray):
            raise RecordError(f"array {name!r} must be a numpy ndarray, got {type(value).__name__}")
        if isinstance(value, np.ma.MaskedArray):
            raise RecordError(f"array {name!r} is a masked array; its mask cannot be stored")
        self._array: npt.NDArray[Any] | None = arrays.to_storable(np.asarray(value), name)
        self._dtype: np.dtype[Any] | None = None
        self._shape: tuple[int, ...] = ()
        self._source: ArraySource | None = None

    @classmethod
    def from_numpy_ndarray(cls, ndarray: npt.NDArray[Any]) -> Array:
        """`Array(ndarray)`."""
        return cls(ndarray=ndarray)

    @classmethod
    def from_torch_tensor(cls, tensor: Any) -> Array:
        """`Array(tensor)`: a copy of the tensor's values, detached and on the CPU."""
        if not is_tensor(tensor):
            raise RecordError(f"expected a PyTorch tensor, got {type(tensor).__name__}")
        return cls(torch_tensor=tensor)

    @classmethod
    def stored(cls, dtype: str, shape: tuple[int, ...], source: ArraySource) -> Array:
        """An array whose bytes stay in the database until `numpy()` is called;
        `dtype` as stored ('<f4', byte order explicit; `PayloadCorrupt` if unusable)."""
        self = cls.__new__(cls)
        self._array = None
        self._dtype = arrays.parse_dtype(dtype, "<stored>")
        self._shape = tuple(shape)
        self._source = source
        return self

    @property
    def dtype(self) -> str:
        """The dtype as Flower spells it, `str(ndarray.dtype)`: 'float32', 'bool',
        '>f4' for a big-endian array (the constructor takes any numpy spelling)."""
        return arrays.dtype_name(self._numpy_dtype())

    def _numpy_dtype(self) -> np.dtype[Any]:
        if self._array is not None:
            return self._array.dtype
        assert self._dtype is not None
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        if self._array is not None:
            return tuple(int(n) for n in self._array.shape)
        return self._shape

    @property
    def nbytes(self) -> int:
        if self._array is not None:
            return int(self._array.nbytes)
        return math.prod(self._shape) * self._numpy_dtype().itemsize

    @property
    def stype(self) -> str:
        """How `data` serialises the array: always `NUMPY_STYPE`."""
        return NUMPY_STYPE

    @property
    def data(self) -> bytes:
        """The array as `np.save` writes it (new bytes on each call; a stored array
        is read first). `Array(a.dtype, a.shape, a.stype, a.data) == a`."""
        raw = arrays.encode(self.numpy(), "").data
        return b"".join([npy_header(self._numpy_dtype(), self.shape), raw])

    @property
    def data_nbytes(self) -> int:
        """`len(self.data)`, without building it or reading a stored array."""
        return len(npy_header(self._numpy_dtype(), self.shape)) + self.nbytes

    @property
    def source(self) -> ArraySource | None:
        """Where the array is stored, for an array that came from the database."""
        return self._source

    @property
    def in_memory(self) -> bool:
        """False for a stored array whose bytes have not been read yet."""
        return self._array is not None

    def numpy(self) -> npt.NDArray[Any]:
        """Return the wrapped array (not a copy); a stored array is read first.

        Changing the returned array in place is allowed: sending it again compares
        its bytes with the stored digest and writes them anew if they changed.
        """
        if self._array is None:
            assert self._source is not None
            self._array = self._source.load()
        return self._array

    def __eq__(self, other: object) -> bool:
        """Equal iff dtype (byte order included), shape and raw bytes are equal
        (NaNs compare by bytes)."""
        if not isinstance(other, Array):
            return NotImplemented
        if self._numpy_dtype() != other._numpy_dtype() or self.shape != other.shape:
            return False
        mine = self.numpy().reshape(-1).view(np.uint8)
        theirs = other.numpy().reshape(-1).view(np.uint8)
        return bool(np.array_equal(mine, theirs))

    def __repr__(self) -> str:
        where = "" if self._array is not None else ", stored"
        return f"Array(dtype={self.dtype!r}, shape={self.shape!r}{where})"
