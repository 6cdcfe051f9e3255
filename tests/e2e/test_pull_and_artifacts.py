"""A real run with real processes: its ServerApp writes into the run's artifact
directory (not where the exec was started), `flpg show` reports its accounting and
that directory, and `flpg pull` writes its final model and metrics, refusing bad input
with one line and its exit code and never leaving a partial file."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.harness import APPS, Federation
from tests.unit.test_modelfiles import _read_safetensors

pytestmark = pytest.mark.e2e

APP = APPS / "artifacts"
MODEL_BYTES = 10 * 4 + 2 * 8  # w: 10 float32, n: 2 int64


def _final(fed: Federation, run_id: int) -> dict[str, Any]:
    lines = [x for x in fed.log_of(run_id).splitlines() if x.startswith("FINAL ")]
    assert len(lines) == 1, fed.log_of(run_id)
    final: dict[str, Any] = json.loads(lines[0][len("FINAL ") :])
    return final


def _one_line_error(result: Any, code: int, text: str) -> None:
    assert result.returncode == code, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("flpg: error: "), result
    assert text in result.stderr, result


def test_a_runs_files_accounting_and_model(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    out = tmp_path / "out"  # (tmp_path is also the federation's working directory)
    out.mkdir()
    fed.federation(2)
    run_id = fed.submit(APP)
    assert fed.wait_run(run_id, timeout=90)["status"] == "finished", fed.logs()

    # The ServerApp ran in <flpg home>/runs/<run id>, named in its environment and log.
    home = Path(fed.env["FLPG_HOME"])
    workdir = home / "runs" / str(run_id)
    log = fed.log_of(run_id)
    assert f"CWD {workdir}" in log and f"ARTIFACT_DIR {workdir}" in log, log
    where = f"{socket.gethostname()}:{workdir}"
    assert f"[event] artifacts of attempt 1: {where}" in log
    assert json.loads((workdir / "final.json").read_text()) == _final(fed, run_id)
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert not list(fed.workdir.glob("final.json"))  # not where the exec was started

    # Accounting: 2 rounds x 2 nodes, each instruction and reply carrying the model.
    doc = fed.cli("show", str(run_id), "--format", "json").json()
    acc = doc["accounting"]
    assert (acc["instructions"], acc["replies"], acc["messages"]) == (4, 4, 8)
    assert acc["bytes_sent"] == acc["bytes_received"] == 4 * MODEL_BYTES
    assert acc["launches"] == 1 and acc["serverapp_seconds"] > 0
    # Nodes compute in parallel: each node's ClientApp time fits in the ServerApp's.
    assert all(0 < n["clientapp_seconds"] <= acc["serverapp_seconds"] for n in acc["nodes"])
    assert acc["clientapp_seconds"] == pytest.approx(
        sum(n["clientapp_seconds"] for n in acc["nodes"])
    )
    by_name = sorted((n["node_name"], n["instructions"], n["bytes_received"]) for n in acc["nodes"])
    assert by_name == [
        ("node0", 2, 2 * MODEL_BYTES),
        ("node1", 2, 2 * MODEL_BYTES),
    ]
    assert doc["artifacts"] == where
    text = fed.cli("show", str(run_id)).stdout
    assert f"traffic:       4 instructions sent ({4 * MODEL_BYTES} B)" in text
    assert f"artifacts:     {where}" in text

    # The model, as npz (default name, in the current directory) and safetensors.
    final = _final(fed, run_id)
    pulled = fed.cli("pull", str(run_id))
    assert f"model of round 2 (2 arrays, {MODEL_BYTES} B) written to run-{run_id}.npz" in (
        pulled.stdout
    )
    assert where in pulled.stdout
    with np.load(fed.workdir / f"run-{run_id}.npz") as npz:
        assert list(npz.keys()) == ["w", "n"]
        for name, values in final.items():
            assert npz[name].tolist() == values
    st_path = out / "m.safetensors"
    fed.cli("pull", str(run_id), "-o", str(st_path), "--round", "2")
    header, arrays = _read_safetensors(st_path)
    assert header["__metadata__"]["round"] == "2"
    assert {k: v.tolist() for k, v in arrays.items()} == final
    metrics = out / "m.json"
    fed.cli("pull", str(run_id), "--no-model", "--metrics", str(metrics))
    rounds = json.loads(metrics.read_text())
    assert [(r["round"], r["phase"]) for r in rounds] == [(1, "train"), (2, "train")]

    # Bad input: one line, its exit code, nothing written, nothing replaced.
    before = st_path.read_bytes()
    cases = [
        (["-o", str(st_path)], 2, "exists; give --force"),
        (["-o", str(out / "m.bin")], 2, "cannot tell the model format"),
        (["--model-format", "onnx"], 2, "'onnx' is not one of"),
        (["-o", str(out / "no" / "m.npz")], 2, "does not exist"),
        (["-o", "/proc/flpg-model.npz"], 2, "cannot write '/proc/flpg-model.npz'"),
        (["-o", str(out / "r1.npz"), "--round", "1"], 4, "no checkpoint of round 1"),
    ]
    for args, code, text in cases:
        _one_line_error(fed.cli("pull", str(run_id), *args, check=False), code, text)
    _one_line_error(fed.cli("pull", "999", check=False), 4, "run 999 does not exist")
    try:
        import torch  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        torch_out = out / "m.pt"
        _one_line_error(
            fed.cli("pull", str(run_id), "-o", str(torch_out), check=False), 2, "needs PyTorch"
        )
    assert st_path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["m.json", "m.safetensors"]
    fed.cli("pull", str(run_id), "-o", str(st_path), "--force")

    # A run that never checkpointed (no exec left to launch it) has no model.
    fed.stop([p for p in fed.procs if p.name == "exec"])
    pending = fed.submit(APP)
    _one_line_error(fed.cli("pull", str(pending), check=False), 4, "has no model to pull")
    doc = fed.cli("show", str(pending), "--format", "json").json()
    assert doc["accounting"]["launches"] == 0 and doc["artifacts"] is None
