"""A Flower app using Flower's built-in mods and lifespans (apps/flwr-mods-lifespan),
run unchanged by the real `flpg run` on a local federation of real processes.

Node p moves every value by 10 * (p + 1) (a step its ClientApp lifespan loads), far
beyond the clipping norm C = 0.5: with `fixedclipping_mod` on the train handler
both nodes send the same update, of norm C, so FedAvg's model after 2 rounds is
2C / 3 in each of its 9 values whatever the weights. By hand, `train.adaptive`
(adaptiveclipping_mod) answers norm C and norm_bit 1, `train.localdp` (LocalDpMod,
clipping norm 1, tiny noise) norm 1 plus noise, and a train message without the
norm a precondition error. `message_size_mod` (app-wide) and `arrays_size_mod` log
on the nodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.harness import Federation

pytestmark = pytest.mark.e2e

APP = Path(__file__).resolve().parent / "apps" / "flwr-mods-lifespan"
C = 0.5


def test_flowers_mods_and_lifespans_run_unchanged(federation: Federation) -> None:
    procs = federation.federation(2)
    result = federation.cli("run", str(APP), "--stream", timeout=180)
    run_id = int(result.stdout.splitlines()[0].split()[2])
    lines = result.stdout.splitlines()
    assert lines[-1] == f"run {run_id} finished", result
    (found,) = [line for line in lines if line.startswith("RESULT ")]
    got = json.loads(found[len("RESULT ") :])

    # fixedclipping_mod with FedAvg: each round adds an update of norm C along ones(9).
    final = np.concatenate([np.ravel(a) for a in got["final"]])
    np.testing.assert_allclose(final, np.full(9, 2 * C / 3), rtol=1e-12)
    assert np.linalg.norm(final) == pytest.approx(2 * C)
    # The handlers ran inside the lifespan (their step came from it); steps 10 and 20.
    for metrics in got["train-metrics"].values():
        assert metrics["step"] == pytest.approx((10 * 10 + 20 * 20) / 30)

    adaptive = got["adaptive"]
    assert [r["norm_bit"] for r in adaptive] == [1, 1]
    assert [r["norm"] for r in adaptive] == [pytest.approx(C), pytest.approx(C)]
    for reply in got["localdp"]:
        assert reply["norm_bit"] is None
        assert 0 < abs(reply["norm"] - 1.0) < 1e-3  # clipped to 1, then noised
        assert reply["distinct"] > 1  # the same clipped step everywhere, but for the noise
    assert [r["error"] for r in got["no-norm"]] == [6, 6]  # MOD_FAILED_PRECONDITION
    assert all("requires the key 'clipping_norm'" in r["reason"] for r in got["no-norm"])
    assert got["bad-type"].startswith("invalid message_type 'fit': expected '<category>'")

    assert "SERVER LIFESPAN setup" in result.stdout
    assert "SERVER LIFESPAN teardown" in result.stdout
    nodes = "\n".join(p.log() for p in procs if p.name.startswith("node"))
    # 2 FedAvg rounds + 3 by hand, on each of 2 nodes
    assert nodes.count("Incoming message size:") == 10, nodes
    assert nodes.count("Outgoing message size:") == 10, nodes
    assert nodes.count("fixedclipping_mod: parameters are clipped by value: 0.5000.") == 4
    assert nodes.count("adaptiveclipping_mod: ndarrays are clipped by value: 0.5000.") == 2
    assert nodes.count("LocalDpMod: local DP noise with") == 2
    assert nodes.count("Total array elements received:") == 6  # train handler: 2 + 2 + 2
