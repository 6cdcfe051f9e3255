"""Compressed array updates (opt-in, beyond Flower): the pure encode/decode layer.

A compressed array keeps its logical dtype, shape and nbytes in its `arrays` row and
its codec in `arrays.codec` (`Codec.spec`). It is cut into logical chunks of
`elements_per_chunk(chunk_size, itemsize)` elements (the last one shorter); each
stored chunk is the encoded form of exactly one logical chunk. `ChunkDecoder` turns a
stored chunk back into that chunk's logical elements, so assembly, aggregation and
digests (taken over the stored bytes) do not change.

Only float16/32/64 arrays, either byte order, are compressed (`Codec.applies_to`).
An encoded chunk of n elements is, all little-endian:

- ``fp16``: n float16.
- ``bf16``: n uint16, the top 16 bits of the float32 value rounded to nearest even
  (float64 goes through float32). NaN stays NaN (quiet, sign kept).
- ``int8``: float32 scale = max|x| / 127 over the chunk (0 for an all-zero chunk),
  then n int8 q = round(x / scale) clipped to [-127, 127]; decoded x = q * scale.
- ``topk:F``: a sparse delta against a base, the arrays the node received: uint32 k,
  then k uint32 indices into the chunk (strictly increasing), then k float32 values;
  decoded = base chunk + the values at the indices. The encoder keeps the
  k = ceil(F * n) (at least 1) largest |delta + residual| (`ErrorFeedback`); readers
  accept any k <= n.

Values a codec cannot carry make `encode_chunks` raise `OverflowError` naming the
array, before it yields anything, so the caller can store that array raw instead:
finite values beyond fp16's or bf16's range (they would become Inf), and NaN or Inf
for int8 and topk. fp16 and bf16 carry NaN and Inf as raw storage does; either way
the aggregator rejects such a reply.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.errors import PayloadCorrupt

__all__ = [
    "Codec",
    "ErrorFeedback",
    "byte_view",
    "elements_per_chunk",
    "encode_chunks",
    "encoded_chunk_size",
    "parse_codec",
    "work_dtype",
]

_DENSE = ("fp16", "bf16", "int8")
_VALID = "use fp16, bf16, int8 or topk:F with 0 < F <= 1 (e.g. topk:0.01)"
# The stored element types (little-endian), shared with chunkdecoder.py.
F2, F4 = np.dtype("<f2"), np.dtype("<f4")
U2, U4, I1 = np.dtype("<u2"), np.dtype("<u4"), np.dtype("i1")
F4_MAX = float(np.finfo(np.float32).max)
F4_TINY = np.float32(np.nextafter(np.float32(0), np.float32(1)))
_MAX_TOPK_CHUNK = 2**32 - 1  # indices are uint32


@dataclass(frozen=True)
class Codec:
    """A compression codec: `name` is fp16, bf16, int8 or topk; `fraction` is topk's F
    (None for the others). `ValueError` if the pair is not one of those."""

    name: str
    fraction: float | None = None

    def __post_init__(self) -> None:
        dense = self.name in _DENSE and self.fraction is None
        topk = (
            self.name == "topk" and isinstance(self.fraction, float) and 0.0 < self.fraction <= 1.0
        )
        if not (dense or topk):
            raise ValueError(f"invalid codec {self.name!r} (fraction {self.fraction!r}); {_VALID}")

    @property
    def spec(self) -> str:
        """The canonical text stored in `arrays.codec`; `parse_codec(spec)` gives it back."""
        return f"topk:{self.fraction!r}" if self.name == "topk" else self.name

    @staticmethod
    def applies_to(dtype: npt.DTypeLike) -> bool:
        """Whether arrays of `dtype` are compressed: float16/32/64, either byte order."""
        parsed = np.dtype(dtype)
        return parsed.kind == "f" and parsed.itemsize in (2, 4, 8)

    @classmethod
    def from_stored(cls, text: str, array_label: str) -> Codec:
        """The codec of a stored array; `PayloadCorrupt` naming it if `text` is unknown."""
        try:
            return parse_codec(text)
        except ValueError:
            raise PayloadCorrupt(f"array {array_label!r} has unknown codec {text!r}") from None


def parse_codec(spec: str) -> Codec:
    """The codec a run config names ("fp16", "bf16", "int8", "topk:0.01"; case and
    surrounding blanks ignored). `ValueError`, one line naming `spec`, otherwise."""
    text = spec.strip().lower() if isinstance(spec, str) else ""
    name, colon, arg = text.partition(":")
    if not colon and name in _DENSE:
        return Codec(name)
    if colon and name == "topk":
        try:
            fraction = float(arg)
        except ValueError:
            fraction = math.nan
        if 0.0 < fraction <= 1.0:
            return Codec("topk", fraction)
    raise ValueError(f"unknown codec {spec!r}; {_VALID}")


def elements_per_chunk(chunk_size: int, itemsize: int) -> int:
    """Elements in one logical chunk: `chunk_size // itemsize`; `ValueError` if none fit."""
    per = chunk_size // itemsize if itemsize > 0 else 0
    if per <= 0:
        raise ValueError(f"chunk_size {chunk_size} holds no element of {itemsize} bytes")
    return per


def _topk_k(fraction: float, n: int) -> int:
    # The decimal as written (0.07 is 7/100), so that ceil(0.07 * 100) is 7, not 8.
    ratio = Fraction(repr(fraction))
    k = -(-ratio.numerator * n // ratio.denominator)
    return min(n, max(1, k))


def encoded_chunk_size(codec: Codec, n: int) -> int:
    """Bytes the encoder writes for a chunk of `n` > 0 elements."""
    if codec.name in ("fp16", "bf16"):
        return 2 * n
    if codec.name == "int8":
        return 4 + n
    assert codec.fraction is not None
    return 4 + 8 * _topk_k(codec.fraction, n)


class ErrorFeedback:
    """Error feedback for topk: per array name, the part of the updates not sent yet.

    Keep one per ClientApp process for the whole run and pass it to every topk
    `encode_chunks`: the node sends topk(delta + residual) and keeps
    residual = (delta + residual) - sent. Residuals are float64 for float64 arrays
    and float32 otherwise, so they cost the model's size (twice it for float16), in
    that process's memory only: a restarted process starts again from zero. A
    residual whose size or dtype no longer matches its array starts again from zero;
    an encoding that raises or is abandoned before its last chunk drops its residual.
    """

    def __init__(self) -> None:
        self._residuals: dict[str, npt.NDArray[np.floating[Any]]] = {}

    def residual(self, name: str) -> npt.NDArray[np.floating[Any]] | None:
        """The flat residual kept for `name`, if any (live: do not change it)."""
        return self._residuals.get(name)

    def reset(self, name: str | None = None) -> None:
        """Forget the residual of `name`, or all of them."""
        if name is None:
            self._residuals.clear()
        else:
            self._residuals.pop(name, None)

    @property
    def nbytes(self) -> int:
        """Memory held by all residuals."""
        return sum(r.nbytes for r in self._residuals.values())

    def _take(self, name: str, size: int, dtype: np.dtype[Any]) -> npt.NDArray[np.floating[Any]]:
        kept = self._residuals.get(name)
        if kept is None or kept.size != size or kept.dtype != dtype:
            kept = self._residuals[name] = np.zeros(size, dtype=dtype)
        return kept


def work_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype deltas and residuals are computed in (float64 for float64, else float32)."""
    return np.dtype(np.float64) if dtype.itemsize == 8 else np.dtype(np.float32)


def _chunk_peak(chunk: npt.NDArray[Any]) -> tuple[float, bool]:
    """(largest finite |x|, whether every x is finite) of a non-empty chunk."""
    hi, lo = float(chunk.max()), float(chunk.min())
    if math.isfinite(hi) and math.isfinite(lo):
        return max(hi, -lo), True
    finite = chunk[np.isfinite(chunk)]
    return (float(np.abs(finite).max()) if finite.size else 0.0), False


def _bf16_bits(chunk: npt.NDArray[Any]) -> npt.NDArray[np.uint16]:
    """bfloat16 bit patterns of `chunk`, rounded to nearest even, NaN kept."""
    x = np.asarray(chunk, dtype=F4)  # no copy for '<f4'
    u = x.view(U4)
    bits = u >> 16
    bits &= 1
    bits += 0x7FFF
    bits += u  # wraps only for NaN patterns, fixed below
    bits >>= 16
    out = bits.astype(U2)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(U2)
    return out


def _int8_scale(peak: float) -> np.float32:
    scale = np.float32(peak / 127)
    # A non-zero chunk never gets scale 0, or it would decode as zeros.
    return F4_TINY if scale == 0 and peak > 0 else scale


def _check_dense(codec: Codec, flat: npt.NDArray[Any], per: int, name: str) -> list[float]:
    """Each chunk's peak; `OverflowError` if a chunk holds values `codec` cannot carry."""
    peaks: list[float] = []
    if codec.name != "int8" and flat.dtype.itemsize == 2:
        return peaks  # float16 values always fit fp16 and bf16
    for start in range(0, flat.size, per):
        peak, finite = _chunk_peak(flat[start : start + per])
        peaks.append(peak)
        with np.errstate(over="ignore"):
            if codec.name == "fp16":
                bad = math.isinf(np.float16(peak))
            elif codec.name == "bf16":
                bad = int(_bf16_bits(np.array([peak]))[0]) & 0x7FFF == 0x7F80
            else:
                bad = not finite or math.isinf(_int8_scale(peak))
        if bad:
            what = "values beyond its range" if finite else "NaN or Inf"
            raise OverflowError(f"array {name!r} holds {what}; codec {codec.spec} cannot carry it")
    return peaks


def _dense_chunks(
    codec: Codec, flat: npt.NDArray[Any], per: int, peaks: list[float]
) -> Generator[bytes, None, None]:
    work = work_dtype(flat.dtype)
    for seq, start in enumerate(range(0, flat.size, per)):
        chunk = flat[start : start + per]
        if codec.name == "fp16":
            yield chunk.astype(F2).tobytes()
        elif codec.name == "bf16":
            yield _bf16_bits(chunk).tobytes()
        else:
            scale = _int8_scale(peaks[seq])
            if scale == 0:
                q = np.zeros(chunk.size, dtype=I1)
            else:
                t = np.divide(chunk, work.type(scale), dtype=work)
                np.rint(t, out=t)
                np.clip(t, -127, 127, out=t)
                q = t.astype(I1)
            yield scale.astype(F4).tobytes() + q.tobytes()


def _check_topk(
    flat: npt.NDArray[Any],
    base: npt.NDArray[Any],
    residual: npt.NDArray[Any] | None,
    per: int,
    name: str,
) -> None:
    """`OverflowError` if an update, its base or delta + residual is not finite float32."""
    for start in range(0, flat.size, per):
        stop = start + per
        peak_a, finite_a = _chunk_peak(flat[start:stop])
        peak_b, finite_b = _chunk_peak(base[start:stop])
        if not (finite_a and finite_b):
            raise OverflowError(
                f"array {name!r} or its base holds NaN or Inf; topk cannot carry it"
            )
        peak_r = _chunk_peak(residual[start:stop])[0] if residual is not None else 0.0
        if peak_a + peak_b + peak_r > F4_MAX:  # rare: look at the actual sums
            acc = np.subtract(flat[start:stop], base[start:stop], dtype=np.float64)
            if residual is not None:
                acc += residual[start:stop]
            with np.errstate(over="ignore"):
                peak = np.abs(acc).max().astype(F4)
            if not np.isfinite(peak):
                raise OverflowError(f"array {name!r}: its update overflows topk's float32 values")


def _top_indices(acc: npt.NDArray[Any], k: int) -> npt.NDArray[np.intp]:
    """Sorted indices of the `k` largest |acc| (ties: lowest indices first)."""
    n = acc.size
    if k >= n:
        return np.arange(n)
    mag = np.abs(acc)
    threshold = np.partition(mag, n - k)[n - k]
    idx = np.flatnonzero(mag >= threshold)
    if idx.size > k:  # ties at the threshold: keep the first ones
        above = np.flatnonzero(mag > threshold)
        ties = np.flatnonzero(mag == threshold)[: k - above.size]
        idx = np.union1d(above, ties)
    return idx


def _topk_chunks(
    codec: Codec,
    flat: npt.NDArray[Any],
    base: npt.NDArray[Any],
    per: int,
    name: str,
    feedback: ErrorFeedback | None,
    residual: npt.NDArray[Any] | None,
) -> Generator[bytes, None, None]:
    assert codec.fraction is not None
    work = work_dtype(flat.dtype)
    finished = False
    try:
        for start in range(0, flat.size, per):
            stop = min(start + per, flat.size)
            acc = np.subtract(flat[start:stop], base[start:stop], dtype=work)
            if residual is not None:
                # The residual chunk becomes delta + residual, then loses what is sent.
                residual[start:stop] += acc
                acc = residual[start:stop]
            idx = _top_indices(acc, _topk_k(codec.fraction, stop - start))
            values = acc[idx].astype(F4)
            if not np.isfinite(values).all():
                raise OverflowError(f"array {name!r}: its update overflows topk's float32 values")
            if residual is not None:
                acc[idx] -= values
            header = np.array([idx.size], dtype=U4).tobytes()
            yield header + idx.astype(U4).tobytes() + values.tobytes()
        finished = True
    finally:
        if not finished and feedback is not None:
            feedback.reset(name)


def encode_chunks(
    codec: Codec,
    arr: npt.NDArray[Any],
    chunk_size: int,
    name: str,
    base: npt.NDArray[Any] | None = None,
    feedback: ErrorFeedback | None = None,
) -> Generator[bytes, None, None]:
    """The encoded chunks of `arr`, one per logical chunk of
    `elements_per_chunk(chunk_size, itemsize)` elements, in C order.

    `base` (same shape and values dtype; topk only, required there) is the array the
    node received, which the reader adds the delta to. `feedback` (topk only,
    optional) carries each array's residual across rounds under `name`.
    Everything is checked before the first chunk: `ValueError` for a dtype no codec
    applies to, a `chunk_size` that holds no element, or a missing or mismatched
    base; `OverflowError` naming the array for values the codec cannot carry (the
    caller stores it raw instead). One copy of `arr` if it is not C-contiguous.
    """
    if not codec.applies_to(arr.dtype):
        raise ValueError(f"array {name!r} has dtype {arr.dtype}; codecs apply to float arrays only")
    per = elements_per_chunk(chunk_size, arr.dtype.itemsize)
    flat = arr.reshape(-1)
    if codec.name != "topk":
        return _dense_chunks(codec, flat, per, _check_dense(codec, flat, per, name))
    if base is None:
        raise ValueError(f"array {name!r}: codec {codec.spec} needs the base the node received")
    if base.shape != arr.shape or base.dtype.newbyteorder("<") != arr.dtype.newbyteorder("<"):
        raise ValueError(
            f"array {name!r} is {arr.dtype} {arr.shape} but its base is {base.dtype} {base.shape}"
        )
    if per > _MAX_TOPK_CHUNK:
        raise ValueError(f"chunk_size {chunk_size} is too large for topk's uint32 indices")
    flat_base = base.reshape(-1)
    residual = None
    if feedback is not None:
        residual = feedback._take(name, flat.size, work_dtype(arr.dtype))
    try:
        _check_topk(flat, flat_base, residual, per, name)
    except OverflowError:
        if feedback is not None:
            feedback.reset(name)
        raise
    return _topk_chunks(codec, flat, flat_base, per, name, feedback, residual)


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat 'B' view of a buffer (no copy)."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
