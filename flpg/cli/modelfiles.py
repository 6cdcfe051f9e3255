"""The files `flpg pull` writes: a model as `.npz`, `.safetensors` or a PyTorch
`state_dict` (`.pt`), and per-round metrics as CSV or JSON.

Every file is written to a temporary file beside its destination and renamed onto
it once complete, so a failure (a bad chunk, a full disk) never leaves a partial
file under the name asked for. `.npz` and `.safetensors` are streamed: memory is one
chunk, whatever the model's size; `.pt` needs the whole model in memory (torch.save).
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from flpg.errors import FlpgError

MODEL_FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}
"""File extension -> model format."""
SUFFIX = {"npz": ".npz", "safetensors": ".safetensors", "torch": ".pt"}
METRICS_FORMATS = {".csv": "csv", ".json": "json"}

SAFETENSORS_DTYPES = {
    "b1": "BOOL",
    "u1": "U8",
    "i1": "I8",
    "u2": "U16",
    "i2": "I16",
    "u4": "U32",
    "i4": "I32",
    "u8": "U64",
    "i8": "I64",
    "f2": "F16",
    "f4": "F32",
    "f8": "F64",
}
"""numpy kind+itemsize -> safetensors dtype (little-endian data)."""


class OutputError(FlpgError):
    """A file `flpg pull` was asked to write cannot be: it exists (without --force),
    its directory is missing or not writable, or its format is unknown or unavailable."""

    exit_code = 2


@dataclass(frozen=True)
class Tensor:
    """One array to write: its name, stored dtype ('<f4'), shape and byte chunks."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterator[bytes]]


def format_of(path: Path, given: str | None, known: dict[str, str], what: str) -> str:
    """`given`, else the format `path`'s extension names; OutputError if neither does."""
    if given is not None:
        return given
    found = known.get(path.suffix.lower())
    if found is None:
        names = ", ".join(sorted(known))
        raise OutputError(
            f"cannot tell the {what} format of {str(path)!r} from its extension "
            f"(known: {names}); give --{what}-format"
        )
    return found


def check_writable(path: Path, force: bool) -> None:
    """OutputError unless `path` may be written: it does not exist (or `force` and it
    is a file), and its directory exists and this process may write it."""
    if path.is_dir():
        raise OutputError(f"{str(path)!r} is a directory; name a file to write")
    if path.exists() and not force:
        raise OutputError(f"{str(path)!r} exists; give --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {str(path)!r}: directory {str(parent)!r} is not writable")


def require_torch() -> Any:
    """The torch module; OutputError (one line) when PyTorch is not installed."""
    try:
        import torch  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise OutputError(
            "--model-format torch needs PyTorch, which is not installed (pip install torch); "
            "use npz or safetensors"
        ) from None
    return torch


@contextmanager
def replacing(path: Path, force: bool) -> Iterator[IO[bytes]]:
    """A temporary file beside `path`, renamed onto it when the block ends without an
    error (removed otherwise). Mode as a new file's (0666 less the umask). OutputError
    when the file cannot be made or written (a read-only place, a full disk)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if not force and path.exists():
            raise OutputError(f"{str(path)!r} appeared meanwhile; give --force to replace it")
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(out: IO[bytes], tensors: Iterable[Tensor]) -> None:
    """`numpy.savez`'s layout (one uncompressed `NAME.npy` per array), streamed."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for t in tensors:
            header = io.BytesIO()
            meta = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(t.dtype)),
                "fortran_order": False,
                "shape": t.shape,
            }
            try:
                np.lib.format.write_array_header_1_0(header, meta)
            except ValueError:  # a header longer than version 1.0 allows
                header = io.BytesIO()
                np.lib.format.write_array_header_2_0(header, meta)
            with zf.open(f"{t.name}.npy", "w", force_zip64=True) as member:
                member.write(header.getvalue())
                for chunk in t.chunks():
                    member.write(chunk)


def safetensors_dtype(t: Tensor) -> str:
    """The safetensors dtype of `t`; OutputError for one it has none for (complex)."""
    dtype = np.dtype(t.dtype)
    found = SAFETENSORS_DTYPES.get(f"{dtype.kind}{dtype.itemsize}")
    if found is None:
        raise OutputError(
            f"array {t.name!r} has dtype {dtype}, which safetensors cannot hold; use npz"
        )
    return found


def write_safetensors(
    out: IO[bytes], tensors: list[Tensor], metadata: dict[str, str] | None = None
) -> None:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header
    (`dtype`, `shape`, `data_offsets` per tensor, `__metadata__`) padded with spaces
    to 8 bytes, then each tensor's little-endian bytes, streamed."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": safetensors_dtype(t),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    out.write(struct.pack("<Q", len(text)))
    out.write(text)
    for t in tensors:
        dtype = np.dtype(t.dtype)
        chunks = t.chunks()
        if dtype.byteorder == ">" and dtype.itemsize > 1:
            chunks = _swapped(chunks, dtype)
        for chunk in chunks:
            out.write(chunk)


def _swapped(chunks: Iterator[bytes], dtype: np.dtype[Any]) -> Iterator[bytes]:
    """Big-endian chunks as little-endian ones (an element may span two chunks)."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        whole = len(data) - len(data) % dtype.itemsize
        rest = data[whole:]
        yield np.frombuffer(data[:whole], dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()
    if rest:
        yield rest  # a length mismatch: the reader of the chunks raises first


def write_torch(out: IO[bytes], tensors: Iterable[Tensor]) -> None:
    """`torch.save` of a state_dict `{name: tensor}` in the stored order (the whole
    model in memory)."""
    from collections import OrderedDict

    torch = require_torch()
    state: OrderedDict[str, Any] = OrderedDict()
    for t in tensors:
        data = b"".join(t.chunks())
        array = np.frombuffer(data, dtype=np.dtype(t.dtype)).reshape(t.shape)
        state[t.name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("=")).copy())
    torch.save(state, out)


def write_metrics(out: IO[bytes], rounds: list[dict[str, Any]], fmt: str) -> None:
    """Round metrics as CSV (`round, phase, num_replies, num_failures`, then one column
    per metric key, sorted) or as a JSON list (one object per round and phase)."""
    if fmt == "json":
        doc = [
            {
                "round": r["round"],
                "phase": r["phase"],
                "num_replies": r["num_replies"],
                "num_failures": r["num_failures"],
                "recorded_at": r["recorded_at"].isoformat(),
                "metrics": r["metrics"],
            }
            for r in rounds
        ]
        out.write((json.dumps(doc, indent=2) + "\n").encode())
        return
    keys = sorted({k for r in rounds for k in r["metrics"]})
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["round", "phase", "num_replies", "num_failures", *keys])
    for r in rounds:
        values = [_cell(r["metrics"].get(k)) for k in keys]
        writer.writerow([r["round"], r["phase"], r["num_replies"], r["num_failures"], *values])
    out.write(text.getvalue().encode())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value)
