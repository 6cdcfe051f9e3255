"""The few pieces of PyTorch this app uses, on numpy, for machines without torch.

Importing it registers it as `torch` (only if torch is absent), so code that asks
for `torch` by name, such as `ArrayRecord.to_torch_state_dict()`, finds it. Tensors
share memory with their ndarray, as `torch.from_numpy` tensors do.
"""

import sys
import types
from collections import OrderedDict

import numpy as np

float32 = np.float32
int64 = np.int64


class Tensor:
    """A CPU tensor: an ndarray with torch's method names."""

    def __init__(self, values):
        self._values = values

    @property
    def shape(self):
        return self._values.shape

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._values

    def add_(self, other):
        self._values += other
        return self

    def copy_(self, other):
        self._values[...] = other.numpy()
        return self

    def __iadd__(self, other):
        return self.add_(other)


class Parameter(Tensor):
    pass


def from_numpy(values):
    return Tensor(values)


def zeros(*size, dtype=float32):
    """`zeros(2, 3)` or `zeros((2, 3))`; `zeros(())` is a scalar."""
    shape = size[0] if len(size) == 1 and isinstance(size[0], tuple) else size
    return Tensor(np.zeros(shape, dtype=dtype))


class no_grad:  # torch's name
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Module:
    """Parameters, buffers and submodules in assignment order, like torch.nn.Module."""

    def __init__(self):
        object.__setattr__(self, "_members", OrderedDict())

    def __setattr__(self, name, value):
        if isinstance(value, (Module, Parameter)):
            self._members[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, tensor):
        self._members[name] = tensor
        object.__setattr__(self, name, tensor)

    def _named_tensors(self, prefix=""):
        for name, member in self._members.items():
            if isinstance(member, Module):
                yield from member._named_tensors(f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", member

    def parameters(self):
        return [t for _, t in self._named_tensors() if isinstance(t, Parameter)]

    def state_dict(self):
        return OrderedDict(self._named_tensors())

    def load_state_dict(self, state_dict):
        own = self.state_dict()
        if list(own) != list(state_dict):
            raise RuntimeError(f"state_dict keys {list(state_dict)} != {list(own)}")
        for name, tensor in own.items():
            value = state_dict[name].numpy()
            if value.shape != tensor.shape:
                raise RuntimeError(f"size mismatch for {name}: {value.shape} != {tensor.shape}")
            tensor.copy_(Tensor(value))

    def to(self, device):
        return self


class Linear(Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=float32))
        self.bias = Parameter(np.zeros(out_features, dtype=float32))


nn = types.SimpleNamespace(Module=Module, Linear=Linear, Parameter=Parameter)
if "torch" not in sys.modules:
    sys.modules["torch"] = sys.modules[__name__]
