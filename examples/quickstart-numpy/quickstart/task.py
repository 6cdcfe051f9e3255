"""The model and the data: binary logistic regression on a synthetic task.

Every partition is drawn from the same ground truth with its own seed, so the
example needs no download and each node sees different examples.
"""

from __future__ import annotations

import numpy as np

NUM_FEATURES = 20


def ground_truth() -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(1234)
    return rng.normal(size=NUM_FEATURES), 0.5


def load_partition(partition_id: int, num_partitions: int, n: int = 400) -> tuple[np.ndarray, ...]:
    """Train and test examples of one partition (deterministic)."""
    w, b = ground_truth()
    rng = np.random.default_rng(10_000 + partition_id * 7919 + num_partitions)
    x = rng.normal(size=(n, NUM_FEATURES))
    y = (x @ w + b + rng.normal(scale=0.5, size=n) > 0).astype(np.float64)
    split = int(0.8 * n)
    return x[:split], y[:split], x[split:], y[split:]


def initial_params() -> list[np.ndarray]:
    return [np.zeros(NUM_FEATURES), np.zeros(1)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def loss_and_accuracy(
    params: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    w, b = params
    p = np.clip(_sigmoid(x @ w + b[0]), 1e-12, 1 - 1e-12)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return loss, float(np.mean((p > 0.5) == y))


def train(
    params: list[np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int, lr: float
) -> list[np.ndarray]:
    """Full-batch gradient descent."""
    w, b = params[0].copy(), params[1].copy()
    for _ in range(epochs):
        err = _sigmoid(x @ w + b[0]) - y
        w -= lr * (x.T @ err) / len(y)
        b -= lr * np.array([err.mean()])
    return [w, b]
