"""Compressed updates where arrays are stored and read (the codecs of codecs.py).

`reply_codec` reads the run config's choice; `compress` turns a float array into the
chunks a codec stores (or None: the array stays raw); `Decoder` turns stored chunks
back into the array's raw bytes, so whoever reads them (the streamed aggregation, a
ClientApp) sees no difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from flpg.app import arrays
from flpg.app.codecs import ChunkDecoder, Codec, elements_per_chunk, encode_chunks, parse_codec

REPLY_CODEC_KEY = "flpg.reply-codec"
"""Run config key choosing how ClientApps' reply arrays are stored: fp16, bf16, int8
(`[tool.flwr.app.config] flpg.reply-codec = "int8"`, or `--run-config`). Absent or
"none": raw."""

DENSE = ("fp16", "bf16", "int8")


def reply_codec(run_config: Mapping[str, Any]) -> Codec | None:
    """The reply codec a run config asks for; `ValueError` (one line, naming the key)
    for an unknown one."""
    value = run_config.get(REPLY_CODEC_KEY)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if not isinstance(value, str):
        raise ValueError(f"run config {REPLY_CODEC_KEY} must be a string, got {value!r}")
    try:
        codec = parse_codec(value)
    except ValueError as exc:
        raise ValueError(f"run config {REPLY_CODEC_KEY}: {exc}") from None
    if codec.name not in DENSE:
        raise ValueError(
            f"run config {REPLY_CODEC_KEY} = {value!r}: replies can be fp16, bf16 or int8"
        )
    return codec


def compress(
    arr: npt.NDArray[Any], codec: Codec, chunk_size: int, name: str
) -> arrays.EncodedArray | None:
    """`arr` as `codec`'s stored chunks, each encoding `chunk_size` bytes of it (rounded
    down to whole elements); None when the codec does not apply (not a float array)
    or cannot carry its values (they would overflow): store it raw then."""
    raw = arrays.encode(arr, name)
    if not codec.applies_to(np.dtype(raw.dtype)) or codec.name not in DENSE:
        return None
    storable = arrays.to_storable(arr, name)
    try:
        chunks = tuple(encode_chunks(codec, storable, chunk_size, name))
    except OverflowError:
        return None
    itemsize = np.dtype(raw.dtype).itemsize
    return arrays.EncodedArray(
        dtype=raw.dtype,
        shape=raw.shape,
        data=raw.data,
        nbytes=raw.nbytes,
        codec=codec.spec,
        chunks=chunks,
        chunk_size=elements_per_chunk(chunk_size, itemsize) * itemsize,
    )


class Decoder:
    """Stored chunks of one compressed array back into its raw bytes, chunk by chunk
    (`PayloadCorrupt` naming the array for a chunk that cannot be decoded)."""

    def __init__(
        self, codec: str, dtype: str, shape: tuple[int, ...], chunk_size: int, label: str
    ) -> None:
        parsed = Codec.from_stored(codec, label)
        self._decoder = ChunkDecoder(parsed, dtype, math.prod(shape), chunk_size, label)

    def decode(self, seq: int, data: bytes | memoryview) -> bytes:
        """The raw bytes of chunk `seq`, from its stored form."""
        return self._decoder.decode(seq, data).tobytes()
