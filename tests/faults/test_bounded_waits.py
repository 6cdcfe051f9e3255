"""No unbounded waits: a run whose ServerApp was SIGKILLed ends within a bound set by
the intervals (by its exec at once, or by the link's heartbeat sweep when no exec
is left), and FedAvg waiting for more nodes than the federation has fails the run
with NodesUnavailable within its timeout."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Federation
from tests.faults.support import (
    INTERVALS,
    SLACK,
    STARTUP,
    TOLERANT,
    assert_at_most_one_reply,
    assert_run_not_ended,
    budget,
    instructions,
    run_states,
    stopwatch,
    wait_until,
)

pytestmark = pytest.mark.e2e

IV = INTERVALS
SILENT_RUN_BOUND = IV.offline_after + IV.heartbeat + 2 * IV.sweep + SLACK
"""ServerApp killed -> run failed by the link: its last heartbeat ages past
offline_after, one sweep."""


def _serverapp_waiting(fed: Federation, run_id: int, markers: Path) -> int:
    """Wait until the run's ServerApp sent its messages and a slow handler runs;
    returns the ServerApp's pid."""

    def waiting() -> bool:
        assert_run_not_ended(fed, run_id)
        rows = fed.sql(
            "SELECT id FROM messages WHERE run_id = %s AND reply_to IS NULL AND state = 'claimed'",
            [run_id],
        )
        return any((markers / str(mid)).exists() for (mid,) in rows)

    wait_until(fed, waiting, 2 * STARTUP, f"run {run_id} waiting for a slow handler")
    return int(fed.scalar("SELECT serverapp_pid FROM runs WHERE id = %s", [run_id]))


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(budget(6 * STARTUP, SILENT_RUN_BOUND))
def test_a_killed_serverapps_run_fails_within_a_bounded_time(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    clock = stopwatch("3a killed ServerApp")
    markers = tmp_path / "markers"
    markers.mkdir()
    _, exec_, *_ = fed.federation(2)
    slow = f"slow-partition=0 slow-delay=600 marker-dir={markers}"

    # With its exec alive, the exec sees the exit and records it at once.
    with_exec = fed.submit(TOLERANT, "--run-config", slow)
    pid = _serverapp_waiting(fed, with_exec, markers)
    _kill(pid)
    with clock.measure("kill -> failed (exec alive)"):
        info = fed.wait_run(with_exec, timeout=IV.poll + SLACK)
    assert (info["status"], info["reason"]) == ("failed", "ServerApp was killed by SIGKILL")

    # Without an exec (it crashed first), only the link can notice: the ServerApp's
    # heartbeat stops, and the run fails within offline_after plus a sweep.
    orphaned = fed.submit(TOLERANT, "--run-config", slow)
    pid = _serverapp_waiting(fed, orphaned, markers)
    # Frozen first: a running ServerApp would notice its exec's death at its next
    # heartbeat and fail itself; this case is about a ServerApp that cannot.
    os.kill(pid, signal.SIGSTOP)
    assert fed.kill(exec_) == -signal.SIGKILL
    assert pid in fed.tagged_pids()  # the ServerApp outlived its exec (own session)
    _kill(pid)
    killed_at = time.monotonic()
    wait_until(fed, lambda: pid not in fed.tagged_pids(), SLACK, "the ServerApp to die")
    # `flpg ls --format json` (what wait_run polls) shows it failed, with the reason.
    info = fed.wait_run(orphaned, timeout=SILENT_RUN_BOUND)
    took = time.monotonic() - killed_at
    print(f"TIMING 3a killed ServerApp: kill -> failed by the link {took:.2f} s")
    assert info["status"] == "failed"
    m = re.fullmatch(
        r"ServerApp stopped heart-beating \(last heartbeat ([\d.]+) s ago\)", info["reason"]
    )
    assert m, info
    assert IV.offline_after <= float(m.group(1)) < IV.offline_after + IV.heartbeat + SLACK
    assert IV.offline_after <= took + IV.heartbeat
    # The link's sweep wrote it, at offline_after past the last heartbeat.
    silent_for = float(
        fed.scalar(
            "SELECT extract(epoch FROM finished_at - heartbeat_at) FROM runs WHERE id = %s",
            [orphaned],
        )
    )
    assert IV.offline_after <= silent_for < IV.offline_after + 2 * IV.sweep + SLACK
    link = next(p for p in fed.procs if p.name == "link")
    assert f"run {orphaned} failed: its ServerApp stopped heart-beating" in link.log()

    # Both runs: nothing left deliverable, and no instruction answered twice.
    for run_id in (with_exec, orphaned):
        states = {m.state for m in instructions(fed, run_id)}
        assert states <= {"done", "cancelled"} and "cancelled" in states, states
        assert fed.scalar(
            "SELECT bool_and(serverapp_pid IS NULL AND finished_at IS NOT NULL) FROM runs"
            " WHERE id = %s",
            [run_id],
        )
    assert run_states(fed) == {
        with_exec: ("failed", "ServerApp was killed by SIGKILL"),
        orphaned: ("failed", info["reason"]),
    }
    assert_at_most_one_reply(fed)


WAIT_TIMEOUT = 3.0
"""FedAvg.start's timeout in the NodesUnavailable test."""


@pytest.mark.timeout(budget(4 * STARTUP, WAIT_TIMEOUT))
def test_fedavg_waiting_for_more_nodes_than_the_federation_has_fails_within_its_timeout(
    federation: Federation,
) -> None:
    fed = federation
    fed.federation(2)
    started = time.monotonic()
    run_id = fed.submit(TOLERANT, "--run-config", f"min-nodes=5 timeout={WAIT_TIMEOUT}")
    info = fed.wait_run(run_id, timeout=WAIT_TIMEOUT + 2 * STARTUP)
    print(f"TIMING 3b NodesUnavailable: submit -> failed {time.monotonic() - started:.2f} s")
    assert info["status"] == "failed"
    expected = (
        f"NodesUnavailable: run {run_id} needs 5 online node(s) of its selection but only 2 "
        f"were online after {WAIT_TIMEOUT:g} s"
    )
    assert expected in info["reason"], info
    # FedAvg waited its timeout, not longer.
    waited = float(
        fed.scalar(
            "SELECT extract(epoch FROM finished_at - started_at) FROM runs WHERE id = %s",
            [run_id],
        )
    )
    assert WAIT_TIMEOUT <= waited < WAIT_TIMEOUT + STARTUP / 2
    assert "TtlFedAvg" in fed.log_of(run_id)  # it was the strategy that waited
    assert fed.scalar("SELECT count(*) FROM messages WHERE run_id = %s", [run_id]) == 0
    (status, reason) = run_states(fed)[run_id]
    assert status == "failed" and reason is not None and expected in reason
    assert list(run_states(fed)) == [run_id]
