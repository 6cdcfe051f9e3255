"""Compressed updates where arrays are stored and read (the codecs of codecs.py).

`reply_codec` reads the run config's choice; `ReplyEncoder` turns a float array into
the chunks a codec stores (or None: the array stays raw), keeping top-k's error
feedback for the run; `Decoder` turns stored chunks back into the array's raw bytes,
so whoever reads them (the streamed aggregation, a ClientApp) sees no difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.app.chunkdecoder import ChunkDecoder
from flpg.app.codecs import (
    Codec,
    ErrorFeedback,
    elements_per_chunk,
    encode_chunks,
    parse_codec,
)

REPLY_CODEC_KEY = "flpg.reply-codec"
"""Run config key choosing how ClientApps' reply arrays are stored: fp16, bf16, int8,
or topk:F (`[tool.flwr.app.config] flpg.reply-codec = "int8"`, or `--run-config`).
Absent or "none": raw."""


def reply_codec(run_config: Mapping[str, Any]) -> Codec | None:
    """The reply codec a run config asks for; `ValueError` (one line, naming the key)
    for an unknown one."""
    value = run_config.get(REPLY_CODEC_KEY)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if not isinstance(value, str):
        raise ValueError(f"run config {REPLY_CODEC_KEY} must be a string, got {value!r}")
    try:
        return parse_codec(value)
    except ValueError as exc:
        raise ValueError(f"run config {REPLY_CODEC_KEY}: {exc}") from None


@dataclass(frozen=True)
class Base:
    """What a top-k reply array is a delta against: the stored array the node received
    (`array_id`), its values as received (`values`, a copy the app cannot change), and
    the key its error feedback is kept under (node, record, array)."""

    array_id: int
    values: npt.NDArray[Any]
    key: str


@dataclass
class ReplyEncoder:
    """A run's reply codec in one ClientApp process, with top-k's residuals."""

    codec: Codec
    feedback: ErrorFeedback = field(default_factory=ErrorFeedback)

    @property
    def needs_base(self) -> bool:
        """Whether arrays are deltas against the received ones (top-k)."""
        return self.codec.name == "topk"

    def encode(
        self, arr: npt.NDArray[Any], chunk_size: int, name: str, base: Base | None = None
    ) -> arrays.EncodedArray | None:
        """`arr` as the codec's stored chunks, each encoding `chunk_size` bytes of it
        (rounded down to whole elements); None when the codec does not apply (not a
        float array; for top-k, no base of the same shape and dtype) or cannot carry
        its values (they would overflow): store it raw then."""
        raw = arrays.encode(arr, name)
        dtype = np.dtype(raw.dtype)
        if not self.codec.applies_to(dtype) or (self.needs_base and base is None):
            return None
        storable = arrays.to_storable(arr, name)
        try:
            chunks = tuple(
                encode_chunks(
                    self.codec,
                    storable,
                    chunk_size,
                    base.key if base is not None else name,
                    base=None if base is None else base.values,
                    feedback=self.feedback if self.needs_base else None,
                )
            )
        except (OverflowError, ValueError):
            return None
        return arrays.EncodedArray(
            dtype=raw.dtype,
            shape=raw.shape,
            data=raw.data,
            nbytes=raw.nbytes,
            codec=self.codec.spec,
            chunks=chunks,
            chunk_size=elements_per_chunk(chunk_size, dtype.itemsize) * dtype.itemsize,
            base_array_id=None if base is None or not self.needs_base else base.array_id,
        )


class Decoder:
    """Stored chunks of one compressed array back into its raw bytes, chunk by chunk
    (`PayloadCorrupt` naming the array for a chunk that cannot be decoded)."""

    def __init__(
        self, codec: str, dtype: str, shape: tuple[int, ...], chunk_size: int, label: str
    ) -> None:
        parsed = Codec.from_stored(codec, label)
        self._decoder = ChunkDecoder(parsed, dtype, math.prod(shape), chunk_size, label)
        self.needs_base = parsed.name == "topk"
        self.itemsize = np.dtype(dtype).itemsize

    def base_range(self, first: int, last: int) -> tuple[int, int]:
        """Bytes [start, stop) of the base that chunks `first`..`last` need (top-k)."""
        return (
            self._decoder.chunk_bounds(first)[0] * self.itemsize,
            self._decoder.chunk_bounds(last)[1] * self.itemsize,
        )

    def decode(
        self, seq: int, data: bytes | memoryview, base: bytes | memoryview | None = None
    ) -> bytes:
        """The raw bytes of chunk `seq`, from its stored form; `base` (top-k) holds the
        base's raw bytes of the same element range."""
        return self._decoder.decode(seq, data, base).tobytes()
