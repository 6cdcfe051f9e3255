"""A Flower app using the Message API beyond FedAvg (apps/flwr-message-api), run
unchanged by the real `flpg run` on a local federation of real processes: lifespans,
`Grid.run`, `create_message`, an error reply with Flower's code and no reason, the
deprecated `create_reply`, and dtypes spelled as Flower spells them (a big-endian
array comes back big-endian)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import Federation

pytestmark = pytest.mark.e2e

APP = Path(__file__).resolve().parent / "apps" / "flwr-message-api"


def test_the_message_api_beyond_fedavg_runs_unchanged(federation: Federation) -> None:
    federation.federation(2)
    result = federation.cli("run", str(APP), "--stream", timeout=120)
    run_id = int(result.stdout.splitlines()[0].split()[2])
    lines = result.stdout.splitlines()
    assert lines[-1] == f"run {run_id} finished", result
    (found,) = [line for line in lines if line.startswith("RESULT ")]
    got = json.loads(found[len("RESULT ") :])
    assert got["status"] == "running"
    content = {
        "dtypes": ["float32", ">f4"],
        "big-is-big": True,
        "setups": 1,  # one lifespan setup for the node's Context, however many messages
        "echo": [">f4", [0.0, 1.0, 2.0, 3.0]],
    }
    error = {"error": 6, "reason": None}  # ErrorCode.MOD_FAILED_PRECONDITION, as Flower's
    expected = [{**kind, "group": group} for group in ("1", "2") for kind in (content, error)]

    def canonical(reply: dict[str, object]) -> str:
        return json.dumps(reply, sort_keys=True)

    assert sorted(got["replies"], key=canonical) == sorted(expected, key=canonical)
    assert "TEARDOWN after setup,main" in result.stdout
