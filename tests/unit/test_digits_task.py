"""The digits example without a database: its task module, and its ServerApp and
ClientApp running FedAvg in-process over an in-memory grid."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

from flpg.bundle.appdir import read_app

DIGITS_DIR = Path(__file__).resolve().parents[2] / "examples" / "digits"
sys.path.insert(0, str(DIGITS_DIR))

from digits import task  # noqa: E402

DEFAULT_CONFIG: dict[str, Any] = read_app(DIGITS_DIR).config


def test_fedavg_in_plain_numpy_over_three_partitions() -> None:
    """The same algorithm without any flpg machinery: a check on the task module alone."""
    cfg = DEFAULT_CONFIG
    seed = int(cfg["seed"])
    params = task.init_params(seed)
    partitions = [task.load_partition(i, 3, str(cfg["partitioning"]), 0.5, seed) for i in range(3)]
    for server_round in range(1, int(cfg["num-server-rounds"]) + 1):
        updates = [
            task.train(
                params,
                x,
                y,
                int(cfg["local-epochs"]),
                float(cfg["lr"]),
                int(cfg["batch-size"]),
                seed=[seed, i, server_round],
            )
            for i, (x, y, _, _) in enumerate(partitions)
        ]
        weights = np.array([len(y) for _, y, _, _ in partitions], dtype=np.float64)
        weights /= weights.sum()
        params = [
            sum(w * u[j].astype(np.float64) for w, u in zip(weights, updates, strict=True)).astype(
                np.float32
            )
            for j in range(len(params))
        ]
    _, accuracy = task.loss_and_accuracy(params, *task.load_test_set())
    assert accuracy >= 0.90


def test_test_set_is_held_out_and_stratified() -> None:
    x_pool, y_pool = task.load_pool()
    x_test, y_test = task.load_test_set()
    assert abs(len(y_test) - task.TEST_FRACTION * (len(y_pool) + len(y_test))) <= 1
    pool_share = np.bincount(y_pool, minlength=10) / len(y_pool)
    test_share = np.bincount(y_test, minlength=10) / len(y_test)
    assert np.abs(pool_share - test_share).max() < 0.01
    # No test image also sits in the pool (the digits set has no exact duplicates across them).
    pool_rows = {row.tobytes() for row in x_pool}
    assert not any(row.tobytes() in pool_rows for row in x_test)


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_partitions", [1, 2, 5, 10])
def test_partitions_cover_every_example_exactly_once(
    partitioning: str, num_partitions: int
) -> None:
    _, labels = task.load_pool()
    parts = task.partition_indices(labels, num_partitions, partitioning, alpha=0.3, seed=7)
    assert len(parts) == num_partitions
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= task.MIN_PARTITION_SIZE


def test_dirichlet_is_deterministic() -> None:
    _, labels = task.load_pool()
    a = task.partition_indices(labels, 5, "dirichlet", alpha=0.5, seed=3)
    b = task.partition_indices(labels, 5, "dirichlet", alpha=0.5, seed=3)
    c = task.partition_indices(labels, 5, "dirichlet", alpha=0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _mean_label_skew(labels: np.ndarray[Any, Any], parts: list[np.ndarray[Any, Any]]) -> float:
    """Mean total-variation distance between each partition's labels and the pool's."""
    overall = np.bincount(labels, minlength=10) / len(labels)
    return float(
        np.mean(
            [
                0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - overall).sum()
                for p in parts
            ]
        )
    )


def test_dirichlet_is_non_iid_for_small_alpha() -> None:
    _, labels = task.load_pool()
    iid = task.partition_indices(labels, 5, "iid", seed=0)
    skewed = task.partition_indices(labels, 5, "dirichlet", alpha=0.1, seed=0)
    assert _mean_label_skew(labels, iid) < 0.15
    assert _mean_label_skew(labels, skewed) > 0.5
    # Some partition lacks some digit entirely.
    assert any(len(np.unique(labels[p])) < 10 for p in skewed)


def test_local_validation_split_is_disjoint_from_local_training() -> None:
    x_train, y_train, x_val, y_val = task.load_partition(1, 4, "dirichlet", 0.5, 0)
    assert len(y_val) == round(task.VAL_FRACTION * (len(y_train) + len(y_val)))
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_val)


def test_bad_arguments_are_refused() -> None:
    _, labels = task.load_pool()
    with pytest.raises(ValueError, match="partitioning"):
        task.partition_indices(labels, 2, "by-writer")
    with pytest.raises(ValueError, match="alpha"):
        task.partition_indices(labels, 2, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="partition-id"):
        task.load_partition(3, 3)


def test_training_is_deterministic_and_does_not_modify_its_input() -> None:
    x, y, _, _ = task.load_partition(0, 2)
    params = task.init_params(0)
    before = [p.copy() for p in params]
    a = task.train(params, x, y, epochs=1, lr=0.3, batch_size=32, seed=[0, 0, 1])
    b = task.train(params, x, y, epochs=1, lr=0.3, batch_size=32, seed=[0, 0, 1])
    assert all(np.array_equal(p, q) for p, q in zip(before, params, strict=True))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert [p.shape for p in a] == [p.shape for p in params]
    assert all(p.dtype == np.float32 for p in a)
