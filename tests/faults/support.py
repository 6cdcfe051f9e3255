"""Helpers of the fault-injection tests: time budgets derived from the intervals the
workers run with, process lookup, and the SQL every scenario asserts its outcome with."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flpg.local.cluster import Cluster
from flpg.settings import Intervals
from flpg.states import TERMINAL, LogStream
from tests.conftest import TEST_ENV
from tests.e2e.harness import APPS, Federation, HarnessError, Proc, wait_for

TOLERANT = APPS / "tolerant"
INITIAL = [0.0, 1.0, 2.0]
"""The tolerant app's initial `w`."""


def intervals_of(env: dict[str, str]) -> Intervals:
    """The intervals the workers started with `env` use."""
    values = {
        f.name: float(env[f"FLPG_{f.name.upper()}"])
        for f in fields(Intervals)
        if f"FLPG_{f.name.upper()}" in env
    }
    return Intervals(**values)


INTERVALS = intervals_of(TEST_ENV)

STARTUP = 30.0
"""Ceiling for one start-up on a loaded 2-core machine: a worker, a ServerApp, a
ClientApp process, a CLI command. Waits that include one add this; it is a
ceiling that turns a hang into a failure, not an expected duration."""

SLACK = 3.0
"""Scheduling slack on top of an interval-derived bound (2 cores, other tests)."""

TEARDOWN = 2 * 15.0 + 10.0
"""The harness's teardown: SIGTERM grace for workers, then for links, then strays."""


def budget(*waits: float) -> float:
    """A test's pytest timeout: its bounded waits plus teardown."""
    return sum(waits) + TEARDOWN


@dataclass
class Stopwatch:
    """Named durations measured by a test; printed (pytest -s) for the record."""

    test: str
    marks: dict[str, float]

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.marks[name] = time.monotonic() - started
            print(f"TIMING {self.test}: {name} {self.marks[name]:.2f} s", flush=True)


def stopwatch(test: str) -> Stopwatch:
    return Stopwatch(test, {})


# ------------------------------------------------------------------ processes


def worker_pid(claimed_by: str) -> int:
    """The process id in a node worker's id (`node:HOST:PID:RANDOM`)."""
    return int(claimed_by.split(":")[2])


def proc_with_pid(fed: Federation, pid: int) -> Proc:
    for proc in fed.procs:
        if proc.pid == pid:
            return proc
    raise HarnessError(f"no process started by the harness has pid {pid}")


def children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`: a node worker's ClientApp
    processes, which run in their own session and so escape a group signal."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[-1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry))
    return sorted(found)


def signal_processes(group: Proc, pids: list[int], sig: signal.Signals) -> None:
    """Send `sig` to a harness process's group and to each of `pids`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group.pid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# ------------------------------------------------------------------ SQL


def node_ids(fed: Federation) -> dict[str, int]:
    return dict(fed.sql("SELECT name, id FROM nodes"))


def node_status(fed: Federation, name: str) -> str:
    return str(fed.scalar("SELECT status::text FROM nodes WHERE name = %s", [name]))


def run_states(fed: Federation) -> dict[int, tuple[str, str | None]]:
    """Every run's (status, reason), from the runs table."""
    return {
        int(run_id): (status, reason)
        for run_id, status, reason in fed.sql("SELECT id, status::text, reason FROM runs")
    }


def reply_counts(fed: Federation) -> dict[int, int]:
    """Replies per instruction, over every run."""
    return {
        int(mid): int(n)
        for mid, n in fed.sql(
            "SELECT i.id, count(r.id) FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
            " WHERE i.reply_to IS NULL GROUP BY i.id"
        )
    }


def assert_at_most_one_reply(fed: Federation) -> None:
    counts = reply_counts(fed)
    assert counts, "no instruction was sent"
    assert max(counts.values()) <= 1, {m: n for m, n in counts.items() if n > 1}


def assert_one_reply_each(fed: Federation, run_id: int) -> None:
    counts = {
        int(mid): int(n)
        for mid, n in fed.sql(
            "SELECT i.id, count(r.id) FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
            " WHERE i.reply_to IS NULL AND i.run_id = %s GROUP BY i.id",
            [run_id],
        )
    }
    assert counts and set(counts.values()) == {1}, counts


@dataclass(frozen=True)
class Instruction:
    id: int
    dst_node_id: int
    group_id: str
    state: str
    attempts: int
    claimed_by: str | None
    reply_error_code: int | None
    reply_error_reason: str | None
    has_reply: bool


def instructions(fed: Federation, run_id: int) -> list[Instruction]:
    """The run's instructions with their reply (if any), by id."""
    rows = fed.sql(
        "SELECT i.id, i.dst_node_id, i.group_id, i.state::text, i.attempts, i.claimed_by,"
        " r.error_code, r.error_reason, r.id IS NOT NULL"
        " FROM messages i LEFT JOIN messages r ON r.reply_to = i.id"
        " WHERE i.reply_to IS NULL AND i.run_id = %s ORDER BY i.id",
        [run_id],
    )
    return [Instruction(*row) for row in rows]


def final_model(fed: Federation, run_id: int) -> list[float]:
    """The `FINAL [...]` line the tolerant app's ServerApp printed, from run_logs."""
    lines = [
        str(line)
        for (line,) in fed.sql(
            "SELECT line FROM run_logs WHERE run_id = %s AND stream = %s"
            " AND line LIKE 'FINAL %%' ORDER BY id",
            [run_id, LogStream.STDOUT],
        )
    ]
    assert len(lines) == 1, lines
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", lines[0])]


def expected_model(rounds: list[list[int]]) -> list[float]:
    """The tolerant app's `w` after FedAvg rounds in which the given partitions' updates
    were aggregated (partition p adds p + 1 with weight 10 * (p + 1))."""
    w = list(INITIAL)
    for partitions in rounds:
        if not partitions:
            continue
        step = sum((p + 1) * 10 * (p + 1) for p in partitions) / sum(
            10 * (p + 1) for p in partitions
        )
        w = [x + step for x in w]
    return w


def round_tallies(fed: Federation, run_id: int) -> list[tuple[int, int, int]]:
    """(round, num_replies, num_failures) of the run's train rounds, from round_history."""
    return [
        (int(r), int(ok), int(failed))
        for r, ok, failed in fed.sql(
            "SELECT round, num_replies, num_failures FROM round_history"
            " WHERE run_id = %s AND phase = 'train' ORDER BY round",
            [run_id],
        )
    ]


def wait_until(fed: Federation, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate()` until it is truthy; HarnessError with every worker's log tail
    after `timeout` s."""
    try:
        return wait_for(predicate, timeout, what, interval=0.1)
    except HarnessError as exc:
        raise HarnessError(f"{exc}\n{fed.logs()}") from None


def outage(fed: Federation, cluster: Cluster, *, immediate: bool = False) -> None:
    """Stop the cluster (fast, or `immediate`: a crash) and start it again only once every
    worker has met the outage ("database unavailable" in its log since the stop)."""
    logged = {proc.name: len(proc.log()) for proc in fed.procs}
    assert cluster.stop(timeout=30, immediate=immediate)
    wait_until(
        fed,
        lambda: all(
            "database unavailable" in proc.log()[logged[proc.name] :] for proc in fed.procs
        ),
        60,
        "every worker to notice the outage",
    )
    cluster.ensure_running()


def assert_run_not_ended(fed: Federation, run_id: int) -> None:
    """Fail at once (not at a wait's timeout) if the run already ended."""
    rows = fed.sql("SELECT status::text, reason FROM runs WHERE id = %s", [run_id])
    if rows and rows[0][0] in TERMINAL:
        raise HarnessError(
            f"run {run_id} ended {rows[0][0]} ({rows[0][1]}) while the test waited on it\n"
            f"{fed.log_of(run_id)}\n{fed.logs()}"
        )
