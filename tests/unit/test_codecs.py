"""Tests for flpg.app.codecs: compressed chunks round-trip within each codec's bound,
align with elements, and every malformed stored chunk is refused by name."""

from __future__ import annotations

import math
import struct
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flpg.app.chunkdecoder import ChunkDecoder
from flpg.app.codecs import (
    Codec,
    ErrorFeedback,
    elements_per_chunk,
    encode_chunks,
    encoded_chunk_size,
    parse_codec,
)
from flpg.errors import PayloadCorrupt

FLOAT_DTYPES = hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64))
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
CHUNK_SIZES = st.integers(min_value=8, max_value=61)  # at least one float64; odd ones too
DENSE = ["fp16", "bf16", "int8"]


def decode_all(
    codec: Codec,
    arr: npt.NDArray[Any],
    chunks: list[bytes],
    chunk_size: int,
    base: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Decode every chunk as a reader would (bytes in, bytes out) and reassemble."""
    decoder = ChunkDecoder(codec, arr.dtype.str, arr.size, chunk_size, "w")
    assert decoder.n_chunks == len(chunks)
    base_bytes = base.reshape(-1).view(np.uint8) if base is not None else None
    out = bytearray()
    for seq, chunk in enumerate(chunks):
        start, stop = decoder.chunk_bounds(seq)
        size = arr.dtype.itemsize
        base_chunk = None if base_bytes is None else bytes(base_bytes[start * size : stop * size])
        values = decoder.decode(seq, chunk, base_chunk)
        assert values.dtype == arr.dtype and values.flags.c_contiguous
        assert values.size == stop - start
        out += values.view(np.uint8).tobytes()
    return np.frombuffer(bytes(out), dtype=arr.dtype).reshape(arr.shape)


def round_trip(spec: str, arr: npt.NDArray[Any], chunk_size: int = 1 << 20) -> npt.NDArray[Any]:
    codec = parse_codec(spec)
    return decode_all(codec, arr, list(encode_chunks(codec, arr, chunk_size, "w")), chunk_size)


# --- codec specs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name", "fraction", "canonical"),
    [
        ("fp16", "fp16", None, "fp16"),
        ("bf16", "bf16", None, "bf16"),
        (" INT8 ", "int8", None, "int8"),
        ("topk:0.01", "topk", 0.01, "topk:0.01"),
        ("topk:1", "topk", 1.0, "topk:1.0"),
        ("topk:.5", "topk", 0.5, "topk:0.5"),
        ("topk:1e-3", "topk", 0.001, "topk:0.001"),
    ],
)
def test_parse_codec_gives_a_canonical_spec(
    spec: str, name: str, fraction: float | None, canonical: str
) -> None:
    codec = parse_codec(spec)
    assert (codec.name, codec.fraction, codec.spec) == (name, fraction, canonical)
    assert parse_codec(codec.spec) == codec
    assert Codec.from_stored(codec.spec, "w") == codec


@pytest.mark.parametrize(
    "spec",
    ["int4", "topk:0", "topk:1.5", "topk:x", "", "topk", "topk:", "topk:-0.1", "topk:nan",
     "topk:inf", "fp16:0.5", "fp 16", "bad\nspec"],
)  # fmt: skip
def test_parse_codec_refuses_bad_specs_in_one_line(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_codec(spec)
    message = str(err.value)
    assert "\n" not in message
    assert repr(spec) in message
    assert "fp16, bf16, int8 or topk:F" in message


def test_codec_refuses_invalid_fields() -> None:
    with pytest.raises(ValueError, match="int4"):
        Codec("int4")
    with pytest.raises(ValueError, match="topk"):
        Codec("topk", 0.0)
    with pytest.raises(ValueError, match="fp16"):
        Codec("fp16", 0.5)


def test_from_stored_refuses_an_unknown_codec_naming_the_array() -> None:
    with pytest.raises(PayloadCorrupt, match=r"array 'layer\.0' has unknown codec 'zstd'"):
        Codec.from_stored("zstd", "layer.0")


def test_only_float_arrays_are_compressed() -> None:
    codec = parse_codec("int8")
    assert all(codec.applies_to(dt) for dt in ["<f2", ">f2", "<f4", ">f4", "<f8", ">f8"])
    others: list[npt.DTypeLike] = ["<i4", "|u1", "|b1", "<c8", np.longdouble]
    assert not any(codec.applies_to(dt) for dt in others)
    assert Codec.applies_to(">f4") and not Codec.applies_to("<i8")


# --- chunk alignment -----------------------------------------------------------


def test_elements_per_chunk() -> None:
    assert elements_per_chunk(1 << 20, 4) == 1 << 18
    assert elements_per_chunk(10, 4) == 2
    with pytest.raises(ValueError, match="holds no element"):
        elements_per_chunk(3, 4)


@settings(max_examples=150, deadline=None)
@given(
    spec=st.sampled_from([*DENSE, "topk:0.3"]),
    dtype=FLOAT_DTYPES,
    shape=SHAPES,
    chunk_size=CHUNK_SIZES,
)
def test_one_encoded_chunk_per_logical_chunk(
    spec: str, dtype: np.dtype[Any], shape: tuple[int, ...], chunk_size: int
) -> None:
    codec = parse_codec(spec)
    arr = np.linspace(-1, 1, math.prod(shape)).astype(dtype).reshape(shape)
    chunks = list(encode_chunks(codec, arr, chunk_size, "w", base=np.zeros_like(arr)))
    per = chunk_size // dtype.itemsize
    sizes = [min(per, arr.size - start) for start in range(0, arr.size, per)]
    assert [len(c) for c in chunks] == [encoded_chunk_size(codec, n) for n in sizes]
    if sizes:  # every chunk but the last is full
        assert sizes[:-1] == [per] * (len(sizes) - 1) and 0 < sizes[-1] <= per


def test_zero_d_and_empty_arrays() -> None:
    scalar = np.array(3.5, dtype=np.float32)
    assert len(list(encode_chunks(parse_codec("int8"), scalar, 64, "w"))) == 1
    assert round_trip("int8", scalar).shape == ()
    assert round_trip("fp16", scalar) == scalar
    empty = np.zeros((0, 5), dtype=np.float64)
    assert list(encode_chunks(parse_codec("bf16"), empty, 64, "w")) == []
    assert round_trip("bf16", empty).shape == (0, 5)


def test_topk_k_is_the_exact_ceiling() -> None:
    codec = parse_codec("topk:0.07")
    assert encoded_chunk_size(codec, 100) == 4 + 8 * 7  # 0.07 * 100 is 7.000000000000001
    assert encoded_chunk_size(codec, 101) == 4 + 8 * 8
    assert encoded_chunk_size(parse_codec("topk:0.01"), 5) == 4 + 8  # at least one
    assert encoded_chunk_size(parse_codec("topk:1"), 5) == 4 + 8 * 5


# --- round trips within each codec's bound -------------------------------------


# Values every codec carries: zero and normal float16 magnitudes.
FINITE = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-4, max_value=6e4),
    st.floats(min_value=-6e4, max_value=-1e-4),
)


@st.composite
def float_arrays(draw: st.DrawFn) -> npt.NDArray[Any]:
    dtype = draw(FLOAT_DTYPES)
    values = draw(hnp.arrays(np.float64, SHAPES, elements=FINITE))
    return values.astype(dtype)


@settings(max_examples=200, deadline=None)
@given(arr=float_arrays(), chunk_size=CHUNK_SIZES)
def test_fp16_round_trip_is_within_half_an_ulp(arr: npt.NDArray[Any], chunk_size: int) -> None:
    out = round_trip("fp16", arr, chunk_size)
    x = arr.astype(np.float64)
    assert np.all(np.abs(out.astype(np.float64) - x) <= np.abs(x) * 2.0**-11 + 2.0**-25)


@settings(max_examples=200, deadline=None)
@given(arr=float_arrays(), chunk_size=CHUNK_SIZES)
def test_bf16_round_trip_is_within_half_an_ulp(arr: npt.NDArray[Any], chunk_size: int) -> None:
    out = round_trip("bf16", arr, chunk_size)
    x = arr.astype(np.float64)
    assert np.all(np.abs(out.astype(np.float64) - x) <= np.abs(x) * 2.0**-8 * 1.0001)


@settings(max_examples=200, deadline=None)
@given(arr=float_arrays(), chunk_size=CHUNK_SIZES)
def test_int8_round_trip_is_within_half_a_step(arr: npt.NDArray[Any], chunk_size: int) -> None:
    codec = parse_codec("int8")
    chunks = list(encode_chunks(codec, arr, chunk_size, "w"))
    out = decode_all(codec, arr, chunks, chunk_size).reshape(-1).astype(np.float64)
    x = arr.reshape(-1).astype(np.float64)
    per = chunk_size // arr.dtype.itemsize
    for seq, chunk in enumerate(chunks):
        (scale,) = struct.unpack("<f", chunk[:4])
        part = slice(seq * per, (seq + 1) * per)
        assert scale == pytest.approx(np.abs(x[part]).max() / 127, rel=1e-6)
        # float16 arrays also round the decoded value to float16
        slack = np.abs(x[part]) * 2.0**-11 if arr.dtype.itemsize == 2 else 1e-6 * scale
        assert np.all(np.abs(out[part] - x[part]) <= scale / 2 + slack)


def test_a_realistic_float32_update_per_codec() -> None:
    rng = np.random.default_rng(1)
    arr = rng.standard_normal((300, 1000), dtype=np.float32)
    assert np.abs(round_trip("fp16", arr) - arr).max() <= np.abs(arr).max() * 2.0**-11
    assert np.all(np.abs(round_trip("bf16", arr) - arr) <= np.abs(arr) * 8e-3)
    assert np.abs(round_trip("int8", arr) - arr).max() <= np.abs(arr).max() / 127 / 2 * 1.0001


def test_fp16_and_bf16_carry_nan_and_inf() -> None:
    arr = np.array([np.nan, np.inf, -np.inf, -0.0, 1.0], dtype=np.float32)
    for spec in ("fp16", "bf16"):
        out = round_trip(spec, arr)
        assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
        assert out[3] == 0 and np.signbit(out[3]) and out[4] == 1.0


def bf16_reference(bits: int) -> int:
    """Round a float32 bit pattern to bfloat16 the long way (nearest, ties to even)."""
    high, low = divmod(bits, 1 << 16)
    if low > 0x8000 or (low == 0x8000 and high & 1):
        high += 1
    return high


@settings(max_examples=300)
@given(bits=st.integers(min_value=0, max_value=2**32 - 1))
def test_bf16_rounds_to_nearest_even(bits: int) -> None:
    arr = np.array([bits], dtype="<u4").view("<f4")
    if not np.isfinite(arr[0]) or abs(float(arr[0])) >= 3.3e38:
        return  # NaN, Inf and overflow have their own tests
    (chunk,) = encode_chunks(parse_codec("bf16"), arr, 4, "w")
    assert struct.unpack("<H", chunk)[0] == bf16_reference(bits)


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0xFF800001])
def test_bf16_keeps_every_nan_a_nan(bits: int) -> None:
    arr = np.array([bits], dtype="<u4").view("<f4")
    out = round_trip("bf16", arr)
    assert np.isnan(out[0]) and np.signbit(out[0]) == bool(bits >> 31)


def test_big_endian_arrays_decode_to_their_own_dtype() -> None:
    arr = (np.arange(-5, 5) / 3).astype(">f8")
    for spec in DENSE:
        out = round_trip(spec, arr, 24)
        assert out.dtype == np.dtype(">f8")
        assert np.allclose(out, arr, atol=np.abs(arr).max() / 127)


# --- values a codec cannot carry -----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "values", "dtype"),
    [
        ("fp16", [1.0, 70000.0], np.float32),
        ("fp16", [65520.0], np.float64),  # rounds up to Inf
        ("fp16", [np.inf, -1e6], np.float32),  # the finite one overflows
        ("bf16", [3.4e38], np.float32),
        ("bf16", [1e300], np.float64),
        ("int8", [1.0, np.nan], np.float32),
        ("int8", [np.inf], np.float16),
        ("int8", [1e300, -1e300], np.float64),
    ],
)
def test_values_a_codec_cannot_carry_raise_before_any_chunk(
    spec: str, values: list[float], dtype: type[np.floating[Any]]
) -> None:
    arr = np.array([0.5] * 20 + values, dtype=dtype)
    with pytest.raises(OverflowError, match=r"array 'dense\.w'"):
        encode_chunks(parse_codec(spec), arr, 16, "dense.w")  # the call raises, not next()


def test_fp16_keeps_values_that_round_into_range() -> None:
    arr = np.array([65519.0, -65519.0, np.inf], dtype=np.float32)
    assert list(round_trip("fp16", arr)) == [65504.0, -65504.0, np.inf]


@pytest.mark.parametrize(
    ("arr", "base"),
    [
        ([1.0, np.nan], [0.0, 0.0]),
        ([1.0, 2.0], [np.inf, 0.0]),
        ([1e300, 0.0], [-1e300, 0.0]),  # the delta overflows float32
    ],
)
def test_topk_refuses_updates_it_cannot_carry(arr: list[float], base: list[float]) -> None:
    feedback = ErrorFeedback()
    codec = parse_codec("topk:0.5")
    list(encode_chunks(codec, np.ones(2), 8, "w", base=np.zeros(2), feedback=feedback))
    with pytest.raises(OverflowError, match=r"array 'w'"):
        encode_chunks(codec, np.array(arr), 8, "w", base=np.array(base), feedback=feedback)
    assert feedback.residual("w") is None  # dropped with the failed encoding


def test_encode_refuses_wrong_inputs() -> None:
    arr = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError, match="float arrays only"):
        encode_chunks(parse_codec("fp16"), np.ones(4, dtype=np.int32), 64, "w")
    with pytest.raises(ValueError, match="holds no element"):
        encode_chunks(parse_codec("fp16"), arr, 3, "w")
    with pytest.raises(ValueError, match="needs the base"):
        encode_chunks(parse_codec("topk:0.1"), arr, 64, "w")
    with pytest.raises(ValueError, match="its base is"):
        encode_chunks(parse_codec("topk:0.1"), arr, 64, "w", base=np.ones(5, dtype=np.float32))
    with pytest.raises(ValueError, match="its base is"):
        encode_chunks(parse_codec("topk:0.1"), arr, 64, "w", base=np.ones(4))


# --- topk and error feedback ---------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    dtype=FLOAT_DTYPES,
    n=st.integers(min_value=1, max_value=200),
    fraction=st.sampled_from([0.01, 0.1, 0.37, 1.0]),
    chunk_size=CHUNK_SIZES,
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_topk_sends_the_largest_deltas_and_keeps_the_base_elsewhere(
    dtype: np.dtype[Any], n: int, fraction: float, chunk_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n).astype(dtype)
    arr = (base.astype(np.float64) + rng.standard_normal(n)).astype(dtype)
    codec = Codec("topk", fraction)
    chunks = list(encode_chunks(codec, arr, chunk_size, "w", base=base))
    out = decode_all(codec, arr, chunks, chunk_size, base)
    work = np.float64 if dtype.itemsize == 8 else np.float32
    delta = arr.astype(work) - base.astype(work)
    per = chunk_size // dtype.itemsize
    for seq, chunk in enumerate(chunks):
        start = seq * per
        size = min(per, n - start)
        (k,) = struct.unpack("<I", chunk[:4])
        idx = np.frombuffer(chunk, dtype="<u4", count=k, offset=4).astype(np.intp)
        assert k == max(1, math.ceil(round(fraction * size, 9)))
        part = slice(start, start + size)
        kept = np.zeros(size, dtype=bool)
        kept[idx] = True
        sent = (base[part][kept] + delta[part][kept].astype(np.float32)).astype(dtype)
        assert np.array_equal(out[part][kept], sent)
        assert np.array_equal(out[part][~kept], base[part][~kept])
        if k < size:  # nothing left out is larger than what was kept
            assert np.abs(delta[part][~kept]).max() <= np.abs(delta[part][kept]).min()


def test_error_feedback_sends_what_was_left_out_later() -> None:
    """With feedback, the sum of what is sent over many rounds tracks the sum of the
    deltas (the gap is the residual, and stays small); without, most of it is lost."""
    rng = np.random.default_rng(7)
    n, rounds = 1000, 200
    drift = np.full(n, 0.01, dtype=np.float32)
    drift[::200] = 1.0  # a few large coordinates win every round without feedback
    codec = parse_codec("topk:0.05")
    gaps = {}
    for feedback in (ErrorFeedback(), None):
        total_delta = np.zeros(n)
        total_sent = np.zeros(n)
        for _ in range(rounds):
            base = rng.standard_normal(n).astype(np.float32)
            arr = base + drift + rng.standard_normal(n).astype(np.float32) * 1e-3
            chunks = list(encode_chunks(codec, arr, 4000, "w", base=base, feedback=feedback))
            total_sent += decode_all(codec, arr, chunks, 4000, base).astype(np.float64) - base
            total_delta += (arr - base).astype(np.float64)
        gaps[feedback is not None] = np.abs(total_delta - total_sent)
        if feedback is not None:
            residual = feedback.residual("w")
            assert residual is not None and feedback.nbytes == n * 4
            # what was not sent yet is what the residual holds
            assert np.allclose(total_delta - total_sent, residual, atol=1e-3)
    # each small coordinate drifted by 2.0 in all
    assert gaps[True].max() < 0.5
    assert gaps[False].mean() > 1.5


def test_feedback_is_dropped_when_an_encoding_is_abandoned() -> None:
    feedback = ErrorFeedback()
    codec = parse_codec("topk:0.1")
    arr, base = np.arange(40, dtype=np.float32), np.zeros(40, dtype=np.float32)
    list(encode_chunks(codec, arr, 64, "w", base=base, feedback=feedback))
    assert feedback.residual("w") is not None
    chunks = encode_chunks(codec, arr, 64, "w", base=base, feedback=feedback)
    next(chunks)
    chunks.close()  # the caller gave up (its write failed)
    assert feedback.residual("w") is None


def test_feedback_restarts_when_the_array_changes() -> None:
    feedback = ErrorFeedback()
    codec = parse_codec("topk:0.5")
    small, other = np.ones(4, dtype=np.float32), np.ones(6, dtype=np.float64)
    list(encode_chunks(codec, small, 64, "w", base=np.zeros(4, np.float32), feedback=feedback))
    list(encode_chunks(codec, other, 64, "w", base=np.zeros(6), feedback=feedback))
    residual = feedback.residual("w")
    assert residual is not None and residual.dtype == np.float64 and residual.size == 6
    feedback.reset()
    assert feedback.nbytes == 0


# --- corrupt chunks ------------------------------------------------------------


def corrupt(decoder: ChunkDecoder, seq: int, data: bytes, base: bytes | None = None) -> str:
    with pytest.raises(PayloadCorrupt) as err:
        decoder.decode(seq, data, base)
    message = str(err.value)
    assert "'model.w'" in message and "\n" not in message
    return message


def f4(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def u4(*values: int) -> bytes:
    return np.array(values, dtype="<u4").tobytes()


@pytest.mark.parametrize("spec", DENSE)
def test_dense_chunks_of_the_wrong_length_are_refused(spec: str) -> None:
    decoder = ChunkDecoder(parse_codec(spec), "<f4", 10, 16, "model.w")  # chunks 4, 4, 2
    good = encoded_chunk_size(decoder.codec, 4)
    assert "bytes" in corrupt(decoder, 0, bytes(good - 1))
    assert "bytes" in corrupt(decoder, 1, bytes(good + 1))
    assert "bytes" in corrupt(decoder, 2, bytes(good))  # the last chunk holds 2
    assert decoder.decode(2, bytes(encoded_chunk_size(decoder.codec, 2))).size == 2


def test_chunk_numbers_past_the_end_are_refused() -> None:
    decoder = ChunkDecoder(parse_codec("fp16"), "<f4", 10, 16, "model.w")
    assert "3 chunks" in corrupt(decoder, 3, bytes(4))
    assert "3 chunks" in corrupt(decoder, -1, bytes(8))
    assert "0 chunks" in corrupt(ChunkDecoder(decoder.codec, "<f4", 0, 16, "model.w"), 0, b"")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0])
def test_int8_scales_that_are_not_finite_or_are_negative_are_refused(scale: float) -> None:
    decoder = ChunkDecoder(parse_codec("int8"), "<f4", 3, 64, "model.w")
    assert "scale" in corrupt(decoder, 0, f4(scale) + bytes(3))


def test_int8_minus_128_is_refused() -> None:
    decoder = ChunkDecoder(parse_codec("int8"), "<f4", 3, 64, "model.w")
    assert "-128" in corrupt(decoder, 0, f4(1.0) + bytes([1, 0x80, 2]))
    assert list(decoder.decode(0, f4(0.5) + bytes([1, 0x81, 2]))) == [0.5, -63.5, 1.0]


TOPK_CASES = {
    "short header": (b"\x01\x00", "header"),
    "k above n": (u4(5) + u4(0, 1, 2, 3, 4) + f4(1, 1, 1, 1, 1), "more than its 4"),
    "too short for k": (u4(2) + u4(0, 1) + f4(1.0), "needs 20"),
    "too long for k": (u4(1) + u4(0) + f4(1.0) + b"\x00", "needs 12"),
    "index out of range": (u4(2) + u4(1, 4) + f4(1, 1), "index 4"),
    "indices decreasing": (u4(2) + u4(2, 1) + f4(1, 1), "strictly increasing"),
    "indices repeated": (u4(3) + u4(0, 2, 2) + f4(1, 1, 1), "strictly increasing"),
    "out of range first": (u4(2) + u4(9, 3) + f4(1, 1), "strictly increasing"),
    "NaN value": (u4(1) + u4(0) + f4(float("nan")), "NaN or Inf"),
    "Inf value": (u4(2) + u4(0, 3) + f4(1, -float("inf")), "NaN or Inf"),
}


@pytest.mark.parametrize("case", TOPK_CASES)
def test_malformed_topk_chunks_are_refused(case: str) -> None:
    data, expected = TOPK_CASES[case]
    decoder = ChunkDecoder(parse_codec("topk:0.5"), "<f4", 4, 64, "model.w")
    assert expected in corrupt(decoder, 0, data, f4(0, 0, 0, 0))


def test_topk_needs_its_base_chunk_of_the_right_length() -> None:
    decoder = ChunkDecoder(parse_codec("topk:0.5"), "<f4", 4, 64, "model.w")
    data = u4(2) + u4(0, 3) + f4(1.5, -2.0)
    assert "base chunk" in corrupt(decoder, 0, data)
    assert "base chunk of 12 bytes, not 16" in corrupt(decoder, 0, data, f4(0, 0, 0))
    out = decoder.decode(0, memoryview(data), memoryview(f4(1, 2, 3, 4)))
    assert list(out) == [2.5, 2.0, 3.0, 2.0]
    assert list(decoder.decode(0, u4(0), f4(1, 2, 3, 4))) == [1, 2, 3, 4]  # k = 0 is valid


def test_stored_metadata_a_decoder_cannot_use_is_refused() -> None:
    fp16 = parse_codec("fp16")
    with pytest.raises(PayloadCorrupt, match=r"'model\.w' has codec fp16 but dtype int32"):
        ChunkDecoder(fp16, "<i4", 4, 64, "model.w")
    with pytest.raises(PayloadCorrupt, match=r"'model\.w'.*holds no element"):
        ChunkDecoder(fp16, "<f8", 4, 7, "model.w")
    with pytest.raises(PayloadCorrupt, match=r"'model\.w' has -1 elements"):
        ChunkDecoder(fp16, "<f8", -1, 64, "model.w")
