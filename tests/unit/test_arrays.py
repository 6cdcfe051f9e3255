"""Tests for flpg.app.arrays: encode -> chunks -> reassemble, exactly and without pickle."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import numpy.typing as npt
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from flpg.app import arrays
from flpg.errors import PayloadCorrupt, RecordError

SUPPORTED_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128)),
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@st.composite
def raw_arrays(draw: st.DrawFn) -> npt.NDArray[Any]:
    """Arrays with arbitrary bit patterns (NaN payloads, odd bool bytes, ...)."""
    dtype = draw(SUPPORTED_DTYPES)
    shape = draw(SHAPES)
    size = math.prod(shape) * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def value_arrays() -> st.SearchStrategy[npt.NDArray[Any]]:
    return SUPPORTED_DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))


ANY_ARRAY = st.one_of(raw_arrays(), value_arrays())


@st.composite
def any_layout(draw: st.DrawFn) -> npt.NDArray[Any]:
    """Arrays as given, or non-contiguous views of them (strided, reversed, transposed)."""
    arr: npt.NDArray[Any] = draw(ANY_ARRAY)
    how = draw(st.sampled_from(["as-is", "step", "reverse", "transpose", "fortran"]))
    if arr.ndim == 0 or how == "as-is":
        return arr
    if how == "step":
        return arr[::2]
    if how == "reverse":
        return arr[..., ::-1]
    if how == "transpose":
        return arr.T
    return np.asfortranarray(arr)


def expected_bytes(arr: npt.NDArray[Any]) -> bytes:
    """C-order bytes of `arr` in its own byte order, computed independently of encode()."""
    return arr.tobytes(order="C")


def reassemble(enc: arrays.EncodedArray, chunk_size: int, name: str = "w") -> npt.NDArray[Any]:
    assembler = arrays.ArrayAssembler(enc.dtype, enc.shape, enc.nbytes, name)
    for chunk in arrays.iter_chunks(enc.data, chunk_size):
        assembler.add(bytes(chunk))  # readers get bytes from the database
    return assembler.finish()


# --- round trip -------------------------------------------------------------


@settings(max_examples=300)
@given(arr=any_layout(), chunk_size=st.integers(min_value=1, max_value=64))
def test_encode_chunk_assemble_round_trip_is_exact(arr: npt.NDArray[Any], chunk_size: int) -> None:
    enc = arrays.encode(arr, "w")
    out = reassemble(enc, chunk_size)

    assert out.shape == arr.shape
    assert out.dtype == arr.dtype  # byte order kept
    assert out.dtype.str == enc.dtype
    assert enc.nbytes == arr.nbytes == len(enc.data)
    assert out.tobytes() == expected_bytes(arr)
    assert out.flags.writeable
    assert out.flags.c_contiguous


@given(arr=any_layout(), chunk_size=st.sampled_from([1, 7, 4096, 1 << 20]))
def test_round_trip_with_memoryview_chunks(arr: npt.NDArray[Any], chunk_size: int) -> None:
    enc = arrays.encode(arr, "w")
    assembler = arrays.ArrayAssembler(enc.dtype, enc.shape, enc.nbytes, "w")
    for chunk in arrays.iter_chunks(enc.data, chunk_size):
        assembler.add(chunk)
    assert assembler.received == enc.nbytes
    assert assembler.finish().tobytes() == expected_bytes(arr)


@given(arr=any_layout())
def test_decode_round_trip(arr: npt.NDArray[Any]) -> None:
    enc = arrays.encode(arr, "w")
    out = arrays.decode(enc.dtype, enc.shape, bytes(enc.data), "w")
    assert out.shape == arr.shape
    assert out.dtype.str == enc.dtype
    assert out.tobytes() == expected_bytes(arr)
    assert out.flags.writeable


def test_decode_copies_out_of_the_source_buffer() -> None:
    source = bytearray(np.arange(4, dtype="<i4").tobytes())
    out = arrays.decode("<i4", (4,), memoryview(source), "w")
    source[0:4] = b"\xff\xff\xff\xff"
    assert out.tolist() == [0, 1, 2, 3]
    out[0] = 9  # writeable
    assert out[0] == 9


def test_nan_payloads_survive_bit_for_bit() -> None:
    bits = np.array([0x7FF8000000000001, 0xFFF0000000000F00, 0x7FF4000000000000], dtype="<u8")
    arr = bits.view("<f8")
    out = reassemble(arrays.encode(arr, "w"), 5)
    assert out.view("<u8").tolist() == bits.tolist()


def test_zero_d_and_empty_arrays() -> None:
    scalar = np.array(3.5, dtype=">f8")
    enc = arrays.encode(scalar, "s")
    assert enc.shape == ()
    assert enc.nbytes == 8
    out = reassemble(enc, 3)
    assert out.shape == ()
    assert float(out) == 3.5

    empty = np.zeros((0, 3), dtype="<f4")
    enc = arrays.encode(empty, "e")
    assert enc.shape == (0, 3)
    assert enc.nbytes == 0
    assert list(arrays.iter_chunks(enc.data, 4)) == []
    out = arrays.ArrayAssembler(enc.dtype, enc.shape, 0, "e").finish()
    assert out.shape == (0, 3)
    assert out.dtype == np.dtype("<f4")


# --- zero copy --------------------------------------------------------------


@given(arr=ANY_ARRAY)
def test_encode_is_zero_copy_for_contiguous_arrays(arr: npt.NDArray[Any]) -> None:
    arr = np.ascontiguousarray(arr)  # C-contiguous, in either byte order
    enc = arrays.encode(arr, "w")
    view = np.frombuffer(enc.data, dtype=np.uint8)
    if arr.nbytes:
        assert np.shares_memory(view, arr)
    assert enc.data.format == "B"
    assert enc.data.ndim == 1
    assert enc.data.readonly


def test_encode_sees_later_writes_because_it_does_not_copy() -> None:
    arr = np.zeros(4, dtype="<i4")
    enc = arrays.encode(arr, "w")
    arr[1] = 7
    assert np.frombuffer(enc.data, dtype="<i4").tolist() == [0, 7, 0, 0]


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype="<f4").reshape(3, 4)[:, ::2],
        np.arange(12, dtype="<f4").reshape(3, 4).T,
        np.arange(12, dtype=">i8").reshape(3, 4)[:, ::2],
    ],
    ids=["strided", "transposed", "big-endian-strided"],
)
def test_encode_copies_non_contiguous(arr: npt.NDArray[Any]) -> None:
    before = arr.copy()
    enc = arrays.encode(arr, "w")
    assert not np.shares_memory(np.frombuffer(enc.data, dtype=np.uint8), arr)
    assert enc.dtype == arr.dtype.str
    np.testing.assert_array_equal(arr, before)  # input untouched
    assert arrays.decode(enc.dtype, enc.shape, enc.data, "w").tolist() == arr.tolist()


def test_iter_chunks_are_zero_copy_slices() -> None:
    arr = np.arange(10, dtype="<u1")
    enc = arrays.encode(arr, "w")
    chunks = list(arrays.iter_chunks(enc.data, 4))
    assert [bytes(c) for c in chunks] == [bytes(range(0, 4)), bytes(range(4, 8)), b"\x08\x09"]
    assert all(np.shares_memory(np.frombuffer(c, dtype=np.uint8), arr) for c in chunks)


# --- iter_chunks / digest ---------------------------------------------------


@given(data=st.binary(max_size=200), chunk_size=st.integers(min_value=1, max_value=50))
def test_iter_chunks_partitions_the_buffer(data: bytes, chunk_size: int) -> None:
    chunks = [bytes(c) for c in arrays.iter_chunks(memoryview(data), chunk_size)]
    assert b"".join(chunks) == data
    assert all(len(c) == chunk_size for c in chunks[:-1])
    assert all(0 < len(c) <= chunk_size for c in chunks)
    assert len(chunks) == -(-len(data) // chunk_size)


def test_iter_chunks_empty_buffer_yields_nothing() -> None:
    assert list(arrays.iter_chunks(memoryview(b""), 10)) == []


@pytest.mark.parametrize("size", [0, -1])
def test_iter_chunks_rejects_non_positive_chunk_size(size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        list(arrays.iter_chunks(memoryview(b"abc"), size))


def test_digest_is_xxh3_128_by_default_and_sha256_truncated_for_older_payloads() -> None:
    arr = np.arange(7, dtype="<f8")
    enc = arrays.encode(arr, "w")
    assert arrays.digest(enc.data) == xxhash.xxh3_128(arr.tobytes()).digest()
    assert arrays.digest(memoryview(b""), "sha256-128").hex() == "e3b0c44298fc1c149afbf4c8996fb924"
    expected = hashlib.sha256(arr.tobytes()).digest()[:16]
    assert arrays.digest(enc.data, "sha256-128") == expected
    for alg in arrays.DIGEST_ALGS:
        # A typed (non-'B') view of the same memory hashes the same bytes.
        assert arrays.digest(arr.data, alg) == arrays.digest(enc.data, alg)
        assert arrays.digest(enc.data, alg) != arrays.digest(memoryview(arr.tobytes()[:-1]), alg)
        # Incremental hashing over uneven pieces equals one pass.
        digest = arrays.Digest(alg=alg)
        for piece in arrays.iter_chunks(enc.data, 5):
            digest.update(piece)
        assert digest.digest() == arrays.digest(enc.data, alg)
        # One flipped bit anywhere changes it.
        flipped = bytearray(arr.tobytes())
        flipped[len(flipped) // 2] ^= 0x10
        assert arrays.digest(memoryview(bytes(flipped)), alg) != arrays.digest(enc.data, alg)


def test_an_unknown_digest_algorithm_is_refused() -> None:
    with pytest.raises(PayloadCorrupt, match="unknown payload digest algorithm 'md5'"):
        arrays.Digest(alg="md5")


# --- dtypes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "stored", "name"),
    [
        (">f4", ">f4", ">f4"),
        ("<f4", "<f4", "float32"),
        ("=f8", "<f8", "float64"),
        (">f2", ">f2", ">f2"),
        ("bool", "|b1", "bool"),
        ("uint8", "|u1", "uint8"),
        ("int8", "|i1", "int8"),
        (">u2", ">u2", ">u2"),
        (">c16", ">c16", ">c16"),
        ("complex64", "<c8", "complex64"),
        ("int64", "<i8", "int64"),
    ],
)
def test_stored_dtype_has_explicit_byte_order_and_apps_see_flowers_spelling(
    dtype: str, stored: str, name: str
) -> None:
    assert arrays.dtype_str(np.dtype(dtype)) == stored
    assert arrays.dtype_name(np.dtype(dtype)) == name == str(np.dtype(dtype))
    assert arrays.parse_dtype(stored, "w") == np.dtype(dtype)
    assert arrays.parse_dtype(name, "w") == np.dtype(dtype)
    assert arrays.same_dtype(stored, np.dtype(dtype).newbyteorder("<"))


def test_big_endian_array_round_trips_through_its_stored_bytes() -> None:
    arr = np.arange(6, dtype=">f4").reshape(2, 3)
    enc = arrays.encode(arr, "w")
    assert enc.dtype == ">f4"
    assert bytes(enc.data) == arr.tobytes()  # stored as it is, no byte swap
    out = arrays.decode(enc.dtype, enc.shape, enc.data, "w")
    assert out.dtype == np.dtype(">f4") and np.array_equal(out, arr)


REJECTED = [
    np.array([1, "a"], dtype=object),
    np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
    np.zeros(2, dtype="V8"),
    np.array(["ab", "c"]),
    np.array([b"ab", b"c"]),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
    np.array([1], dtype="timedelta64[s]"),
]


@pytest.mark.parametrize("arr", REJECTED, ids=lambda a: str(a.dtype))
def test_encode_rejects_unsupported_dtypes_naming_the_array(arr: npt.NDArray[Any]) -> None:
    with pytest.raises(RecordError) as info:
        arrays.encode(arr, "layer.weight")
    message = str(info.value)
    assert message == (
        f"array 'layer.weight' has dtype {arr.dtype}, which cannot be stored; "
        "use a numeric or bool dtype"
    )


@pytest.mark.skipif(
    np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 on this platform"
)
def test_encode_rejects_platform_dependent_longdouble() -> None:
    with pytest.raises(RecordError, match="'ld'"):
        arrays.encode(np.zeros(2, dtype=np.longdouble), "ld")


@pytest.mark.parametrize("dtype", ["|O", ">f16", "<M8[s]", "|V4", "not-a-dtype", "<U2"])
def test_assembler_rejects_unsupported_stored_dtypes(dtype: str) -> None:
    with pytest.raises(PayloadCorrupt, match="'w'"):
        arrays.ArrayAssembler(dtype, (1,), 4, "w")


# --- corrupt payloads -------------------------------------------------------


@given(arr=raw_arrays().filter(lambda a: a.nbytes > 0), chunk_size=st.integers(1, 16))
def test_short_payload_is_corrupt(arr: npt.NDArray[Any], chunk_size: int) -> None:
    enc = arrays.encode(arr, "w")
    assembler = arrays.ArrayAssembler(enc.dtype, enc.shape, enc.nbytes, "conv1")
    for chunk in arrays.iter_chunks(enc.data[:-1], chunk_size):
        assembler.add(chunk)
    with pytest.raises(PayloadCorrupt, match="'conv1'"):
        assembler.finish()


@given(arr=raw_arrays(), chunk_size=st.integers(1, 16))
def test_long_payload_is_corrupt(arr: npt.NDArray[Any], chunk_size: int) -> None:
    enc = arrays.encode(arr, "w")
    assembler = arrays.ArrayAssembler(enc.dtype, enc.shape, enc.nbytes, "conv1")
    for chunk in arrays.iter_chunks(enc.data, chunk_size):
        assembler.add(chunk)
    with pytest.raises(PayloadCorrupt, match="'conv1'"):
        assembler.add(b"\x00")


def test_overflowing_chunk_is_rejected_before_writing() -> None:
    assembler = arrays.ArrayAssembler("<u2", (2,), 4, "w")
    assembler.add(b"\x01\x00")
    with pytest.raises(PayloadCorrupt, match="longer"):
        assembler.add(b"\x02\x00\x03")
    assert assembler.received == 2
    assembler.add(b"\x02\x00")
    assert assembler.finish().tolist() == [1, 2]


def test_assembler_rejects_inconsistent_metadata() -> None:
    with pytest.raises(PayloadCorrupt, match="'w'"):
        arrays.ArrayAssembler("<f4", (2, 3), 23, "w")
    with pytest.raises(PayloadCorrupt, match="shape"):
        arrays.ArrayAssembler("<f4", (-1,), 0, "w")


def test_assembler_refuses_chunks_after_finish() -> None:
    assembler = arrays.ArrayAssembler("|u1", (1,), 1, "w")
    assembler.add(b"\x05")
    assert assembler.finish().tolist() == [5]
    with pytest.raises(RuntimeError):
        assembler.add(b"")


@pytest.mark.parametrize("data", [b"\x00" * 7, b"\x00" * 9, b""])
def test_decode_checks_length(data: bytes) -> None:
    with pytest.raises(PayloadCorrupt, match="'bias'"):
        arrays.decode("<f4", (2,), data, "bias")
