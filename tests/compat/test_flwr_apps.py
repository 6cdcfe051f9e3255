"""Apps written for Flower's Message API (`import flwr...`, `[tool.flwr.app]`), given
unchanged to the real `flpg run` on a local federation of real processes.

apps/flwr-numpy is a quickstart-numpy style FedAvg app made deterministic: node with
partition-id p returns arrays + (p + 1) with num-examples 10 * (p + 1), so the result
is exactly computable. apps/flwr-unsupported imports a name of Flower's legacy API flpg lacks
(`flwr.common.ndarrays_to_parameters`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.harness import Federation
from tests.e2e.test_cli_errors import TABLES, assert_one_line_error, counts

pytestmark = pytest.mark.e2e

APPS = Path(__file__).resolve().parent / "apps"
NUM_NODES = 2


def expected_final(rows: int, cols: int, rounds: int) -> list[np.ndarray]:
    """FedAvg's result as its aggregator computes it (float64, weighted sum / total)."""
    arrays = [np.arange(rows * cols, dtype=np.float64).reshape(rows, cols), np.zeros(cols)]
    for _ in range(rounds):
        new = []
        for value in arrays:
            acc, total = np.zeros(value.shape, dtype=np.float64), 0.0
            for pid in range(NUM_NODES):
                weight = float(10 * (pid + 1))
                acc += (value + (pid + 1)) * weight
                total += weight
            new.append(acc / total)
        arrays = new
    return arrays


def test_a_flower_app_runs_unchanged(federation: Federation) -> None:
    federation.federation(NUM_NODES)
    # model.cols is a key of the nested [tool.flwr.app.config.model] table.
    result = federation.cli(
        "run", str(APPS / "flwr-numpy"), "--run-config", "model.cols=4", "--stream", timeout=120
    )
    run_id = int(result.stdout.splitlines()[0].split()[2])
    assert result.stdout.rstrip().splitlines()[-1] == f"run {run_id} finished", result
    finals = [line for line in result.stdout.splitlines() if line.startswith("FINAL ")]
    assert len(finals) == 1, result
    final = [np.asarray(a, dtype=np.float64) for a in json.loads(finals[0][6:])]
    expected = expected_final(rows=2, cols=4, rounds=2)
    assert [a.shape for a in final] == [(2, 4), (4,)]
    for got, want in zip(final, expected, strict=True):
        assert np.array_equal(got, want), (got, want)
    np.testing.assert_allclose(final[1], np.full(4, 10 / 3))  # 2 rounds of + 5/3
    log = federation.log_of(run_id)
    assert "INFO    : model 2x4, 2 rounds" in log, log


def test_a_flower_name_flpg_lacks_is_refused_at_submit(federation: Federation) -> None:
    federation.sql("INSERT INTO nodes (name, node_config) VALUES ('n0', '{}')")
    result = federation.cli("run", str(APPS / "flwr-unsupported"), check=False)
    line = assert_one_line_error(
        result,
        "app flwr-unsupported",
        "component 'flwr_unsupported.server_app:app' does not import: "
        "flwr.common.ndarrays_to_parameters is not supported by flpg (supported: Array, ",
    )
    assert result.returncode == 2, result
    assert "Traceback" not in line
    assert counts(federation) == dict.fromkeys(TABLES, 0)
