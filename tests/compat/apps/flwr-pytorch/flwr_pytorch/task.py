"""flwr-pytorch: the model and a deterministic local update."""

import numpy as np

try:
    import torch
    import torch.nn as nn
except ImportError:  # no PyTorch here: the stand-in, registered as `torch`
    from flwr_pytorch import torch_standin as torch

    nn = torch.nn


class Net(nn.Module):
    """A linear layer and a step counter kept as a buffer (as BatchNorm keeps one)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))


def initial_state_dict():
    """Fixed starting values, so the final model is known exactly."""
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5
    return {
        "fc.weight": torch.from_numpy(weight),
        "fc.bias": torch.from_numpy(np.zeros(2, dtype=np.float32)),
        "num_steps": torch.from_numpy(np.array(0, dtype=np.int64)),
    }


def train(net, epochs: int, lr: float, partition_id: int) -> float:
    """Each epoch moves every parameter by lr * (partition_id + 1) and counts a step."""
    with torch.no_grad():
        for _ in range(epochs):
            for param in net.parameters():
                param.add_(lr * (partition_id + 1))
            net.num_steps += 1
    return float(lr * (partition_id + 1))


def total(net) -> float:
    """The sum of the parameters: what evaluation reports."""
    return float(sum(param.detach().cpu().numpy().sum() for param in net.parameters()))
