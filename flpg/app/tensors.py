"""Optional PyTorch support for records: torch is never imported unless a caller
asks for tensors (`require_torch`), and tensors are recognised only once the app
has imported torch itself."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["is_tensor", "numpy_for_torch", "require_torch", "tensor_to_numpy"]


def is_tensor(value: object) -> bool:
    """Whether `value` is a `torch.Tensor` (False whenever torch is not imported)."""
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None)
    return isinstance(tensor_type, type) and isinstance(value, tensor_type)


def tensor_to_numpy(tensor: Any) -> npt.NDArray[Any]:
    """A new ndarray holding the tensor's values (detached and moved to the CPU
    first), so later changes to the tensor do not show in it. TypeError (one line)
    for a dtype numpy lacks, such as torch.bfloat16."""
    try:
        values = tensor.detach().cpu().numpy()
    except TypeError as exc:
        raise TypeError(
            f"a {tensor.dtype} tensor has no numpy dtype, so no Array can hold it; "
            f"convert it first (e.g. tensor.float()): {exc}"
        ) from None
    return np.array(values, copy=True)


def numpy_for_torch(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """`values` as `torch.from_numpy` takes it: the array itself when it is in native
    byte order and writable (the tensor then shares its memory), else a copy that is."""
    if not values.dtype.isnative:
        return values.astype(values.dtype.newbyteorder("="))
    if not values.flags.writeable:
        return values.copy()
    return values


def require_torch(what: str) -> ModuleType:
    """The `torch` module, imported now if needed; `RuntimeError` naming `what`
    if PyTorch is not installed."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise RuntimeError(f"PyTorch is required to use {what}") from exc
