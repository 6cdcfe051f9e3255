"""The data and the model: scikit-learn's 8x8 digits and a numpy MLP.

Data: 1797 grey-scale images of handwritten digits (64 pixels, 10 classes)
shipped inside scikit-learn, so nothing is downloaded; pixels are standardised. A fixed, stratified
20 % test set is held out for the ServerApp's centralised evaluation and no
node ever trains on it. The rest is split across `num-partitions` nodes, IID
or non-IID (Dirichlet over labels), and every node keeps 20 % of its
partition as a local validation split for federated evaluation.

Model: 64 -> 64 (ReLU) -> 10 (softmax), cross-entropy loss, gradients by
hand, mini-batch SGD. Everything is deterministic given the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Params = list[Array]

NUM_FEATURES = 64
NUM_HIDDEN = 64
NUM_CLASSES = 10
TEST_FRACTION = 0.2
TEST_SEED = 2024  # fixed on purpose: every run and every node sees the same test set
VAL_FRACTION = 0.2
MIN_PARTITION_SIZE = 10
PARTITIONINGS = ("iid", "dirichlet")


# --------------------------------------------------------------------------- data


@lru_cache(maxsize=1)
def _dataset() -> tuple[Array, Array, Array, Array]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)  # pixels are 0..16
    y = data.target.astype(np.int64)
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=TEST_SEED
    )
    # Standardise every pixel with fixed constants (like the usual MNIST mean and
    # std), taken from the training pool only; always-blank pixels stay 0.
    mean, std = x_pool.mean(axis=0), x_pool.std(axis=0) + 0.1
    x_pool, x_test = (x_pool - mean) / std, (x_test - mean) / std
    arrays = (x_pool, y_pool, x_test, y_test)
    for a in arrays:
        a.setflags(write=False)  # cached and shared: nobody may modify them
    return arrays


def load_pool() -> tuple[Array, Array]:
    """The examples the nodes share out between them (everything but the test set)."""
    x, y, _, _ = _dataset()
    return x, y


def load_test_set() -> tuple[Array, Array]:
    """The held-out, stratified test set for centralised evaluation."""
    _, _, x, y = _dataset()
    return x, y


def partition_indices(
    labels: Array,
    num_partitions: int,
    partitioning: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[Array]:
    """Split `range(len(labels))` into `num_partitions` disjoint, sorted index arrays.

    "iid": a random permutation cut into near-equal parts. "dirichlet": for each
    class, the shares of the partitions are drawn from Dirichlet(alpha); smaller
    alpha means more skewed label distributions. A partition that already holds
    its fair share (n / num_partitions) gets no more classes, and the draw is
    repeated until every partition holds at least MIN_PARTITION_SIZE examples
    (or n // num_partitions if that is smaller). Deterministic given `seed`.
    """
    n = len(labels)
    if num_partitions < 1 or num_partitions > n:
        raise ValueError(f"num-partitions must be within [1, {n}], got {num_partitions}")
    if partitioning not in PARTITIONINGS:
        raise ValueError(f"partitioning must be one of {PARTITIONINGS}, got {partitioning!r}")
    rng = np.random.default_rng(seed)
    if partitioning == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), num_partitions)]
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")

    min_size = min(MIN_PARTITION_SIZE, n // num_partitions)
    fair_share = n / num_partitions
    for _ in range(100):
        parts: list[list[Array]] = [[] for _ in range(num_partitions)]
        sizes = np.zeros(num_partitions)
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_partitions, alpha)) * (sizes < fair_share)
            if not shares.sum() > 0:  # all the mass fell on full partitions
                shares = (sizes < fair_share).astype(np.float64)
            cuts = (np.cumsum(shares / shares.sum())[:-1] * len(idx)).astype(np.int64)
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].append(chunk)
                sizes[i] += len(chunk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise ValueError(
        f"could not give each of {num_partitions} partitions {min_size} examples "
        f"with alpha={alpha}; use a larger alpha or fewer partitions"
    )


@lru_cache(maxsize=8)
def _partitions(num_partitions: int, partitioning: str, alpha: float, seed: int) -> list[Array]:
    _, y = load_pool()
    return partition_indices(y, num_partitions, partitioning, alpha, seed)


def load_partition(
    partition_id: int,
    num_partitions: int,
    partitioning: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> tuple[Array, Array, Array, Array]:
    """`(x_train, y_train, x_val, y_val)` of one node's partition (deterministic)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be within [0, {num_partitions}), got {partition_id}")
    x, y = load_pool()
    idx = _partitions(num_partitions, partitioning, float(alpha), seed)[partition_id]
    idx = np.random.default_rng([seed, num_partitions, partition_id]).permutation(idx)
    n_val = round(VAL_FRACTION * len(idx)) if len(idx) > 1 else 0
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


# --------------------------------------------------------------------------- model


def init_params(seed: int = 0) -> Params:
    """He-initialised weights `[w1, b1, w2, b2]` (float32)."""
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((NUM_FEATURES, NUM_HIDDEN)) * np.sqrt(2 / NUM_FEATURES)).astype(
            np.float32
        ),
        np.zeros(NUM_HIDDEN, dtype=np.float32),
        (rng.standard_normal((NUM_HIDDEN, NUM_CLASSES)) * np.sqrt(1 / NUM_HIDDEN)).astype(
            np.float32
        ),
        np.zeros(NUM_CLASSES, dtype=np.float32),
    ]


def _softmax(logits: Array) -> Array:
    z: Array = np.exp(logits - logits.max(axis=1, keepdims=True))
    total: Array = z.sum(axis=1, keepdims=True)
    return z / total


def predict_proba(params: Params, x: Array) -> Array:
    """Class probabilities, shape `(len(x), NUM_CLASSES)`."""
    w1, b1, w2, b2 = params
    return _softmax(np.maximum(x @ w1 + b1, 0) @ w2 + b2)


def loss_and_accuracy(params: Params, x: Array, y: Array) -> tuple[float, float]:
    """Mean cross-entropy and accuracy; `(0.0, 0.0)` on no examples."""
    if len(y) == 0:
        return 0.0, 0.0
    p = predict_proba(params, x)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
    return loss, float(np.mean(p.argmax(axis=1) == y))


def train(
    params: Params,
    x: Array,
    y: Array,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int | Sequence[int] = 0,
) -> Params:
    """Mini-batch SGD on the cross-entropy; returns new arrays (the input is not modified)."""
    w1, b1, w2, b2 = (np.array(p, dtype=np.float32) for p in params)
    rng = np.random.default_rng(seed)
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x[batch], y[batch]
            pre = xb @ w1 + b1
            hidden = np.maximum(pre, 0)
            grad = _softmax(hidden @ w2 + b2)
            grad[np.arange(len(yb)), yb] -= 1
            grad /= len(yb)  # d loss / d logits
            grad_hidden = (grad @ w2.T) * (pre > 0)
            w2 -= lr * (hidden.T @ grad)
            b2 -= lr * grad.sum(axis=0)
            w1 -= lr * (xb.T @ grad_hidden)
            b1 -= lr * grad_hidden.sum(axis=0)
    return [w1, b1, w2, b2]
