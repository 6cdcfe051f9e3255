"""Optional: Flower's own FedAvgM, FedProx, FedAdagrad, FedAdam, FedYogi and QFedAvg,
run in a separate Flower install (FLWR_VENV, default /tmp/flwr-venv) on the same
replies over three rounds, end with the arrays flpg's end with.

Skipped when there is no Flower install; flpg never depends on Flower. Flower computes
in float32, flpg in float64 (stored as float32), hence the tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from flpg.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, QFedAvg

FLWR_PYTHON = Path(os.environ.get("FLWR_VENV", "/tmp/flwr-venv")) / "bin" / "python"
ROUNDS, NODES = 3, 4
SHAPES = {"w": (4, 6), "b": (5,)}

STRATEGIES: dict[str, Callable[[], FedAvg]] = {
    "FedAvgM": lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    "FedProx": lambda: FedProx(proximal_mu=0.1),
    "FedAdagrad": lambda: FedAdagrad(eta=0.05),
    "FedAdam": lambda: FedAdam(),
    "FedYogi": lambda: FedYogi(eta=0.05, beta_2=0.9),
    "QFedAvg": lambda: QFedAvg(0.1, q=0.2),
}

FLOWER_SCRIPT = """
import json, sys
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
import flwr.serverapp.strategy as s
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
data = np.load(sys.argv[1])
rounds, nodes, names = int(data["rounds"]), int(data["nodes"]), %(names)r
class Grid:
    def get_node_ids(self):
        return list(range(1, nodes + 1))
def replies(r):
    out = []
    for i in range(nodes):
        arrays = ArrayRecord({k: Array(data[f"{r}/{i}/{k}"]) for k in names})
        metrics = MetricRecord({"num-examples": int(data[f"n/{i}"]),
                                "train_loss": float(data[f"loss/{r}/{i}"])})
        content = RecordDict({"arrays": arrays, "metrics": metrics})
        out.append(Message(content, reply_to=Message(RecordDict(), i + 1, "train")))
    return out
made = {
    "FedAvgM": lambda: s.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    "FedProx": lambda: s.FedProx(proximal_mu=0.1),
    "FedAdagrad": lambda: s.FedAdagrad(eta=0.05),
    "FedAdam": lambda: s.FedAdam(),
    "FedYogi": lambda: s.FedYogi(eta=0.05, beta_2=0.9),
    "QFedAvg": lambda: s.QFedAvg(client_learning_rate=0.1, q=0.2),
}
result = {}
for name, make in made.items():
    strategy = make()
    x = ArrayRecord({k: Array(data[f"x/{k}"]) for k in names})
    for r in range(1, rounds + 1):
        list(strategy.configure_train(r, x, ConfigRecord(), Grid()))
        x, _ = strategy.aggregate_train(r, replies(r))
    result[name] = {k: x[k].numpy().astype(float).ravel().tolist() for k in names}
print(json.dumps(result))
"""


class StandInGrid:
    run_id = 1

    def get_node_ids(self) -> list[int]:
        return list(range(1, NODES + 1))

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)


def data() -> dict[str, Any]:
    rng = np.random.default_rng(5)
    out: dict[str, Any] = {"rounds": np.array(ROUNDS), "nodes": np.array(NODES)}
    for k, shape in SHAPES.items():
        out[f"x/{k}"] = rng.normal(0, 1, shape).astype(np.float32)
    for i in range(NODES):
        out[f"n/{i}"] = np.array(1 + 3 * i)
        for r in range(1, ROUNDS + 1):
            out[f"loss/{r}/{i}"] = np.array(0.2 + 0.5 * i + 0.1 * r)
            for k, shape in SHAPES.items():
                out[f"{r}/{i}/{k}"] = rng.normal(0.1 * i, 1, shape).astype(np.float32)
    return out


def flpg_run(make: Callable[[], FedAvg], saved: dict[str, Any]) -> dict[str, Any]:
    strategy = make()
    x = ArrayRecord({k: saved[f"x/{k}"] for k in SHAPES})
    for r in range(1, ROUNDS + 1):
        list(strategy.configure_train(r, x, ConfigRecord(), cast(Grid, StandInGrid())))
        replies = []
        for i in range(NODES):
            metrics = {
                "num-examples": int(saved[f"n/{i}"]),
                "train_loss": float(saved[f"loss/{r}/{i}"]),
            }
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: saved[f"{r}/{i}/{k}"] for k in SHAPES}),
                    "metrics": MetricRecord(metrics),
                }
            )
            replies.append(Message(content, reply_to=Message(RecordDict(), i + 1, "train")))
        new, _ = strategy.aggregate_train(r, replies)
        assert new is not None
        x = new
    return {k: x[k].numpy().ravel() for k in SHAPES}


@pytest.mark.skipif(not FLWR_PYTHON.exists(), reason="no Flower install at FLWR_VENV")
def test_flowers_own_mean_like_strategies_agree(tmp_path: Path) -> None:
    saved = data()
    np.savez(tmp_path / "replies.npz", **saved)
    done = subprocess.run(
        [
            str(FLWR_PYTHON),
            "-c",
            FLOWER_SCRIPT % {"names": list(SHAPES)},
            str(tmp_path / "replies.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flower = json.loads(done.stdout.splitlines()[-1])
    assert set(flower) == set(STRATEGIES)
    for name, make in STRATEGIES.items():
        ours = flpg_run(make, saved)
        for k in SHAPES:
            np.testing.assert_allclose(ours[k], flower[name][k], rtol=1e-5, atol=1e-6, err_msg=name)
