"""Optional: Flower's own differential-privacy wrappers on the same replies and the
same numpy seed give the same aggregate and clipping norm as flpg's, over three
rounds. Runs where a Python with Flower installed is found (FLPG_FLOWER_PYTHON, the
Flower install the other cross-checks use (FLWR_VENV, default /tmp/flwr-venv), or the
benchmarks' `benchmarks/.flower-venv`); Flower is never a dependency of flpg."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flpg.app.message import Message
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.strategy import FedAvg, Strategy
from flpg.serverapp.strategy import dp_adaptive_clipping as ada
from flpg.serverapp.strategy import dp_fixed_clipping as fix

ROOT = Path(__file__).resolve().parents[2]


def flower_python() -> str | None:
    given = os.environ.get("FLPG_FLOWER_PYTHON")
    candidates = (
        [Path(given)]
        if given
        else [
            Path(os.environ.get("FLWR_VENV", "/tmp/flwr-venv")) / "bin" / "python",
            ROOT / "benchmarks" / ".flower-venv" / "bin" / "python",
        ]
    )
    return next((str(c) for c in candidates if c.exists()), None)


FLOWER = flower_python()
pytestmark = pytest.mark.skipif(FLOWER is None, reason="no Python with Flower installed")

# Per round: (update added to the global model, weight, norm bit for client-side).
ROUNDS = [
    [(0.02, 1, 0), (0.5, 3, 1), (-0.01, 2, 0), (0.3, 1, 1)],
    [(0.05, 2, 1), (0.01, 1, 0), (0.4, 1, 1), (-0.2, 4, 1)],
    [(0.001, 1, 0), (0.002, 1, 0), (0.9, 5, 1), (0.03, 2, 0)],
]
START = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.ones(5, np.float32)]
CASES: dict[str, tuple[str, list[Any], dict[str, Any]]] = {
    "server_fixed": ("DifferentialPrivacyServerSideFixedClipping", [0.8, 0.1, 4], {}),
    "client_fixed": ("DifferentialPrivacyClientSideFixedClipping", [0.8, 0.1, 4], {}),
    "server_adaptive": (
        "DifferentialPrivacyServerSideAdaptiveClipping",
        [0.3, 4],
        {"initial_clipping_norm": 0.2, "clipped_count_stddev": 1.0},
    ),
    "client_adaptive": (
        "DifferentialPrivacyClientSideAdaptiveClipping",
        [0.3, 4],
        {"initial_clipping_norm": 0.2, "clipped_count_stddev": 1.0},
    ),
}

FLOWER_SCRIPT = """
import json, sys
import numpy as np
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id = 1
TaskIdentity.node_id = 0
TaskIdentity.task_id = 1
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
import flwr.serverapp.strategy as s

spec = json.loads(sys.stdin.read())
out = {}
for case, (name, args, kwargs) in spec["cases"].items():
    strategy = getattr(s, name)(s.FedAvg(), *args, **kwargs)
    arrays = ArrayRecord({k: Array(np.array(v, np.float32)) for k, v in spec["start"].items()})
    np.random.seed(spec["seed"])
    norms = []
    for rnd, replies in enumerate(spec["rounds"], start=1):
        config = ConfigRecord()
        if hasattr(strategy, "current_arrays"):
            strategy.current_arrays = arrays
        else:
            config["clipping_norm"] = strategy.clipping_norm
        msgs = []
        for node, (delta, weight, bit) in enumerate(replies, start=1):
            ins = Message(RecordDict(), dst_node_id=node, message_type="train")
            new = {k: Array(a.numpy() + np.float32(delta)) for k, a in arrays.items()}
            metrics = {"num-examples": weight, "norm_bit": bit}
            content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics)})
            msgs.append(Message(content, reply_to=ins))
        arrays, _ = strategy.aggregate_train(rnd, msgs)
        norms.append(strategy.clipping_norm)
    out[case] = {"arrays": {k: a.numpy().tolist() for k, a in arrays.items()}, "norms": norms}
print(json.dumps(out))
"""


def run_flpg(name: str, args: list[Any], kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    strategy: Strategy = getattr(fix if "Fixed" in name else ada, name)(FedAvg(), *args, **kwargs)
    arrays = ArrayRecord({k: Array(v.copy()) for k, v in zip("wb", START, strict=True)})
    np.random.seed(seed)
    norms = []
    for rnd, replies in enumerate(ROUNDS, start=1):
        config = ConfigRecord()
        if hasattr(strategy, "current_arrays"):
            strategy.current_arrays = arrays
        else:
            config["clipping_norm"] = strategy.clipping_norm  # type: ignore[attr-defined]
        msgs = []
        for node, (delta, weight, bit) in enumerate(replies, start=1):
            new = {k: Array(a.numpy() + np.float32(delta)) for k, a in arrays.items()}
            metrics = MetricRecord({"num-examples": weight, "norm_bit": bit})
            content = RecordDict({"arrays": ArrayRecord(new), "metrics": metrics})
            msgs.append(Message(content, reply_to=Message(RecordDict(), node, "train")))
        result, _ = strategy.aggregate_train(rnd, msgs)
        assert result is not None
        arrays = result
        norms.append(strategy.clipping_norm)  # type: ignore[attr-defined]
    return {"arrays": {k: a.numpy().tolist() for k, a in arrays.items()}, "norms": norms}


def test_flowers_wrappers_give_the_same_aggregates_and_norms() -> None:
    assert FLOWER is not None
    spec = {
        "cases": CASES,
        "rounds": ROUNDS,
        "start": {k: v.tolist() for k, v in zip("wb", START, strict=True)},
        "seed": 1234,
    }
    done = subprocess.run(
        [FLOWER, "-c", FLOWER_SCRIPT],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    for case, (name, args, kwargs) in CASES.items():
        ours = run_flpg(name, args, kwargs, 1234)
        np.testing.assert_allclose(ours["norms"], theirs[case]["norms"], rtol=1e-6, err_msg=case)
        for key in "wb":
            np.testing.assert_allclose(
                ours["arrays"][key], theirs[case]["arrays"][key], rtol=1e-5, atol=1e-6, err_msg=case
            )
