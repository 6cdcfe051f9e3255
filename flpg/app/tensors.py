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

__all__ = ["is_tensor", "require_torch", "tensor_to_numpy"]


def is_tensor(value: object) -> bool:
    """Whether `value` is a `torch.Tensor` (False whenever torch is not imported)."""
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None)
    return isinstance(tensor_type, type) and isinstance(value, tensor_type)


def tensor_to_numpy(tensor: Any) -> npt.NDArray[Any]:
    """A new ndarray holding the tensor's values (detached and moved to the CPU
    first), so later changes to the tensor do not show in it."""
    return np.array(tensor.detach().cpu().numpy(), copy=True)


def require_torch(what: str) -> ModuleType:
    """The `torch` module, imported now if needed; `RuntimeError` naming `what`
    if PyTorch is not installed."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise RuntimeError(f"PyTorch is required to use {what}") from exc
