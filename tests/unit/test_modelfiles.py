"""The files `flpg pull` writes, read back with numpy (and with the safetensors
package when it is installed); a failed write leaves no file behind."""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flpg.cli import modelfiles
from flpg.cli.modelfiles import OutputError, Tensor

ARRAYS = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "conv.bias": np.array([1.5, -2.0], dtype=">f8"),  # big-endian: swapped for safetensors
    "steps": np.array(7, dtype=np.int64),  # a scalar
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 3), dtype=np.uint8),
}


def tensors(arrays: dict[str, np.ndarray[Any, Any]], chunk: int = 5) -> list[Tensor]:
    """Each array as the store yields it: raw bytes in small chunks (an element may
    span two chunks)."""

    def chunker(data: bytes) -> Callable[[], Iterator[bytes]]:
        return lambda: (data[i : i + chunk] for i in range(0, len(data), chunk))

    return [
        Tensor(name, a.dtype.str, a.shape, a.nbytes, chunker(a.tobytes()))
        for name, a in arrays.items()
    ]


def test_npz_reads_back_with_numpy_load(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    with modelfiles.replacing(path, force=False) as out:
        modelfiles.write_npz(out, tensors(ARRAYS))
    with np.load(path) as npz:
        assert list(npz.keys()) == list(ARRAYS)
        for name, expected in ARRAYS.items():
            assert npz[name].dtype == expected.dtype and npz[name].shape == expected.shape
            assert np.array_equal(npz[name], expected)


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """A reader of the format written with numpy alone: header length, JSON, bytes."""
    kinds = {v: k for k, v in modelfiles.SAFETENSORS_DTYPES.items()}
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header = json.loads(raw[8 : 8 + length])
    body = raw[8 + length :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = np.dtype("<" + kinds[info["dtype"]]) if info["dtype"] != "BOOL" else np.bool_
        out[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(info["shape"])
    assert max(info["data_offsets"][1] for k, info in header.items() if k != "__metadata__") == len(
        body
    )
    return header, out


def test_safetensors_reads_back_with_numpy_and_the_safetensors_package(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with modelfiles.replacing(path, force=False) as out:
        modelfiles.write_safetensors(out, tensors(ARRAYS), {"run_id": "3", "round": "2"})
    header, got = _read_safetensors(path)
    assert header["__metadata__"] == {"run_id": "3", "round": "2"}
    assert header["conv.weight"] == {"dtype": "F32", "shape": [2, 3, 4], "data_offsets": [0, 96]}
    assert header["conv.bias"]["dtype"] == "F64" and header["mask"]["dtype"] == "BOOL"
    for name, expected in ARRAYS.items():
        assert np.array_equal(got[name], expected), name
    if importlib.util.find_spec("safetensors") is not None:  # the reference reader too
        from safetensors.numpy import load_file  # type: ignore[import-not-found]

        loaded = load_file(str(path))
        for name, expected in ARRAYS.items():
            assert np.array_equal(loaded[name], expected), name


def test_safetensors_refuses_complex_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    bad = {"z": np.array([1 + 2j], dtype=np.complex64)}
    with (
        pytest.raises(OutputError, match="'z' has dtype complex64, which safetensors cannot"),
        modelfiles.replacing(path, force=False) as out,
    ):
        modelfiles.write_safetensors(out, tensors(bad))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_stream_leaves_neither_the_file_nor_a_temporary(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")

    def broken() -> Iterator[bytes]:
        yield b"\0" * 8
        raise RuntimeError("chunk 1 missing")

    with (
        pytest.raises(RuntimeError, match="chunk 1 missing"),
        modelfiles.replacing(path, force=True) as out,
    ):
        modelfiles.write_npz(out, [Tensor("w", "<f8", (2,), 16, broken)])
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    assert path.read_bytes() == b"old"  # --force replaces only a complete file


def test_destinations_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    existing = tmp_path / "m.npz"
    existing.write_bytes(b"x")
    with pytest.raises(OutputError, match="exists; give --force"):
        modelfiles.check_writable(existing, force=False)
    modelfiles.check_writable(existing, force=True)
    with pytest.raises(OutputError, match="does not exist"):
        modelfiles.check_writable(tmp_path / "nope" / "m.npz", force=False)
    with pytest.raises(OutputError, match="is a directory"):
        modelfiles.check_writable(tmp_path, force=True)
    with pytest.raises(OutputError, match=r"known: \.npz, \.pt, \.pth, \.safetensors"):
        modelfiles.format_of(tmp_path / "m.bin", None, modelfiles.MODEL_FORMATS, "model")
    assert modelfiles.format_of(Path("m.PT"), None, modelfiles.MODEL_FORMATS, "model") == "torch"
    assert modelfiles.format_of(Path("m.bin"), "npz", modelfiles.MODEL_FORMATS, "model") == "npz"


def test_torch_format_needs_torch(tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(OutputError, match="needs PyTorch, which is not installed"):
            modelfiles.require_torch()
        return
    import torch  # type: ignore[import-not-found]

    path = tmp_path / "m.pt"
    with modelfiles.replacing(path, force=False) as out:
        modelfiles.write_torch(out, tensors(ARRAYS))
    state = torch.load(path)
    assert list(state) == list(ARRAYS)
    for name, expected in ARRAYS.items():
        assert np.array_equal(
            state[name].numpy(), expected.astype(expected.dtype.newbyteorder("="))
        )


def test_metrics_as_csv_and_json(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, tzinfo=UTC)
    rounds = [
        {"round": 1, "phase": "train", "metrics": {"loss": 0.9}, "num_replies": 2,
         "num_failures": 0, "recorded_at": at},
        {"round": 1, "phase": "evaluate", "metrics": {"acc": 0.5, "loss": 1.1},
         "num_replies": 2, "num_failures": 1, "recorded_at": at},
    ]  # fmt: skip
    csv_path, json_path = tmp_path / "m.csv", tmp_path / "m.json"
    with modelfiles.replacing(csv_path, force=False) as out:
        modelfiles.write_metrics(out, rounds, "csv")
    assert csv_path.read_text().splitlines() == [
        "round,phase,num_replies,num_failures,acc,loss",
        "1,train,2,0,,0.9",
        "1,evaluate,2,1,0.5,1.1",
    ]
    with modelfiles.replacing(json_path, force=False) as out:
        modelfiles.write_metrics(out, rounds, "json")
    doc = json.loads(json_path.read_text())
    assert doc[1] == {
        "round": 1,
        "phase": "evaluate",
        "num_replies": 2,
        "num_failures": 1,
        "recorded_at": "2026-01-01T00:00:00+00:00",
        "metrics": {"acc": 0.5, "loss": 1.1},
    }
