"""Apps written as Flower's docs and examples write them (`import flwr...`,
`[tool.flwr.app]`), each given unchanged to the real `flpg run` on one local
federation of real processes, with its result checked:

- apps/flwr-sklearn: logistic regression on sklearn's bundled digits, FedAvg with a
  centralised `evaluate_fn`; accuracy above a threshold.
- apps/flwr-pytorch: the model's state_dict through `ArrayRecord(model.state_dict())`
  and `.to_torch_state_dict()` (a numpy stand-in registers as `torch` where torch is
  absent); final arrays exact, dtypes kept (an int64 buffer included).
- apps/flwr-custom-strategy: a FedAvg subclass overriding configure_train,
  aggregate_train, configure_evaluate and aggregate_evaluate; per-round config seen
  by the clients, a server learning rate and custom metrics, all exact.
- apps/flwr-analytics: `@app.query("histogram")` / `@app.query("summary")` answered
  per node, combined by the ServerApp; exact histogram and moments.

The quickstart-numpy shape is covered by test_flwr_apps.py (apps/flwr-numpy).

On the same federation, the apps `flpg new --framework numpy|sklearn|pytorch`
generates run unchanged. Where torch is not installed, the pytorch one passes `flpg
run`'s submit-time check, since it imports torch only when it runs, and its run then
fails naming the missing module; where it is, the run finishes and its model learns."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flpg.local.scaffold import FRAMEWORKS
from flpg.states import TERMINAL
from tests.e2e.harness import Federation, HarnessError, flpg_executable

pytestmark = pytest.mark.e2e

APPS = Path(__file__).resolve().parent / "apps"
NUM_NODES = 2
RUN_TIMEOUT = 90


def wait_ended(federation: Federation, run_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Wait until every run has ended: `{run id: (status, reason)}` (read with SQL,
    not the CLI, to keep the test fast on a busy machine)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        federation.check_alive()
        rows = federation.sql(
            "SELECT id, status::text, coalesce(reason, '') FROM runs WHERE id = ANY(%s)",
            [run_ids],
        )
        ended = {row[0]: (row[1], row[2]) for row in rows if row[1] in TERMINAL}
        if len(ended) == len(run_ids):
            return ended
        if time.monotonic() > deadline:
            raise HarnessError(f"runs not ended after {RUN_TIMEOUT} s: {rows}\n{federation.logs()}")
        time.sleep(0.5)


def output(federation: Federation, run_id: int) -> str:
    """The run's stored log: its ServerApp's output and events."""
    rows = federation.sql("SELECT line FROM run_logs WHERE run_id = %s ORDER BY id", [run_id])
    return "\n".join(row[0] for row in rows)


def result_of(log: str) -> dict[str, Any]:
    """The JSON a ServerApp printed after `RESULT `."""
    found = [line for line in log.splitlines() if line.startswith("RESULT ")]
    assert len(found) == 1, log
    result: dict[str, Any] = json.loads(found[0][len("RESULT ") :])
    return result


def check_sklearn(got: dict[str, Any]) -> None:
    assert got["shapes"] == [[10, 64], [10]]
    assert got["federated"] > 0.85, got  # ~0.94: multinomial logistic regression
    assert got["central"] > 0.85, got


def check_pytorch(got: dict[str, Any]) -> None:
    # 2 rounds, lr 0.25, 2 local epochs; partition p moves by 0.25 * (p + 1) per epoch
    # with weight 2p + 1: a round moves (1 * 0.5 + 3 * 1.0) / 4 = 0.875.
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 + np.float32(1.75)
    assert got["final"] == {
        "fc.weight": ["float32", weight.tolist()],
        "fc.bias": ["float32", [1.75, 1.75]],
        "num_steps": ["int64", 4],  # 2 epochs a round on every node, averaged
    }
    assert got["sum"] == float(weight.sum()) + 3.5 == got["eval"]


def check_custom_strategy(got: dict[str, Any]) -> None:
    # Round r sends lr = 1 / 2**r; partition p adds lr * (p + 1) with weight 2p + 1, so
    # FedAvg's mean moves lr * 7 / 4, and the server takes half that step.
    step = [0.5 * 7 / 4 * 0.5, 0.25 * 7 / 4 * 0.5]  # 0.4375, 0.21875
    moved = sum(step)
    assert got["final"] == [[moved] * 4, [[1 + moved] * 2] * 2]
    for rnd, lr in (("1", 0.5), ("2", 0.25)):
        train = got["train"][rnd]
        assert train["lr-seen"] == lr, got  # the config configure_train added
        assert train["tag-ok"] == 1.0, got  # each client saw its round's tag
        assert (train["replies"], train["tags-ok"]) == (2, 2), got  # aggregate_train's own
    # Evaluation after round r sees first value x_r; partition p reports (p+1) * r * x_r.
    x1, x2 = step[0], moved
    assert got["evaluate"]["1"]["value"] == (x1 + 2 * x1) / 2
    assert got["evaluate"]["1"]["max-value"] == 2 * x1
    assert got["evaluate"]["2"]["value"] == (2 * x2 + 4 * x2) / 2
    assert got["evaluate"]["2"]["max-value"] == 4 * x2
    phases = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")
    assert got["trace"] == [f"{phase} {rnd}" for rnd in (1, 2) for phase in phases]


def check_analytics(got: dict[str, Any]) -> None:
    values = np.concatenate([(np.arange(50) * (p + 3)) % 23 for p in range(NUM_NODES)])
    histogram, _ = np.histogram(values, bins=[0, 5, 10, 15, 20, 25])
    mean = values.sum() / values.size
    assert got == {
        "histogram": histogram.tolist(),
        "count": 100,
        "sum": int(values.sum()),
        "mean": mean,
        "variance": float((values**2).sum() / values.size - mean**2),
        "max": 22,
    }


CHECKS = {
    "flwr-sklearn": check_sklearn,
    "flwr-pytorch": check_pytorch,
    "flwr-custom-strategy": check_custom_strategy,
    "flwr-analytics": check_analytics,
}


def check_numpy_template(log: str) -> None:
    prefix = "final federated evaluation: "
    (line,) = [x for x in log.splitlines() if x.startswith(prefix)]
    final = ast.literal_eval(line[len(prefix) :])
    assert final["eval-loss"] < 0.05, log  # the data's noise alone is 0.01
    assert "round 3/3 train: 2 ok, 0 failed" in log, log


def check_sklearn_template(log: str) -> None:
    (line,) = [x for x in log.splitlines() if x.startswith("final held-out accuracy: ")]
    assert float(line.rsplit(" ", 1)[1]) > 0.85, log
    assert "round 3/3 evaluate: 2 ok, 0 failed" in log, log


def check_pytorch_template(log: str) -> None:
    prefix = "final federated evaluation: "
    (line,) = [x for x in log.splitlines() if x.startswith(prefix)]
    final = ast.literal_eval(line[len(prefix) :])
    assert final["eval-accuracy"] > 0.6, log  # 4 classes: chance is 0.25
    assert "round 3/3 evaluate: 2 ok, 0 failed" in log, log


TORCH = importlib.util.find_spec("torch") is not None


def generate(federation: Federation, target: Path, framework: str) -> Path:
    """`flpg new my-FRAMEWORK --framework FRAMEWORK --dir TARGET`; the app's path."""
    federation.cli("new", f"my-{framework}", "--framework", framework, "--dir", str(target))
    return target / f"my-{framework}"


def test_flower_style_apps_and_templates_run_unchanged(
    federation: Federation, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:  # each `flpg run` imports its app
        generated = [
            pool.submit(generate, federation, tmp_path, framework)
            for framework in ("numpy", "sklearn", "pytorch")
        ]
        federation.federation(NUM_NODES)
        apps = [APPS / name for name in CHECKS] + [future.result() for future in generated]
        run_ids = list(pool.map(federation.submit, apps))
    runs = dict(zip([app.name for app in apps], run_ids, strict=True))
    ended = wait_ended(federation, run_ids)
    logs = {name: output(federation, run_id) for name, run_id in runs.items()}

    def finished(name: str) -> str:
        assert ended[runs[name]][0] == "finished", (name, ended[runs[name]], logs[name])
        return logs[name]

    for name, check in CHECKS.items():
        check(result_of(finished(name)))
    check_numpy_template(finished("my-numpy"))
    check_sklearn_template(finished("my-sklearn"))
    if TORCH:
        check_pytorch_template(finished("my-pytorch"))
        return
    # Without torch the app passed `flpg run`'s check (it imports torch only when it
    # runs), and its ServerApp then failed naming the missing module.
    status, reason = ended[runs["my-pytorch"]]
    assert status == "failed" and "No module named 'torch'" in reason, (reason, logs["my-pytorch"])


def test_flpg_new_refuses_a_framework_it_has_no_template_for(tmp_path: Path) -> None:
    done = subprocess.run(
        [flpg_executable(), "new", "my-app", "--framework", "tensorflow", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "'tensorflow' is not one of 'numpy', 'sklearn', 'pytorch'" in done.stderr, done
    assert FRAMEWORKS == ("numpy", "sklearn", "pytorch")  # the CLI's choices, in the same order
    assert list(tmp_path.iterdir()) == []
