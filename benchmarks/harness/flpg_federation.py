"""flpg's workers for one configuration: `flpg link`, `flpg exec` and the node
workers of one federation on one database, started as tagged processes (see
`procs`), and the `flpg run` that submits `benchmarks/apps/bench_flpg` to them.

Default bus intervals are used (production settings); any `FLPG_HEARTBEAT`,
`FLPG_POLL`, ... in the caller's environment is passed on (`PASS_ON`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from harness.procs import HarnessError, Proc, ProcessSet
from harness.rss import children_map, memory_low
from harness.security import WorkerSecurity

BENCH_DIR = Path(__file__).resolve().parent.parent
APP_DIR = BENCH_DIR / "apps" / "bench_flpg"
VIRTUAL_NODES = Path(__file__).resolve().parent / "virtual_nodes.py"
TERMINAL = ("finished", "failed", "stopped")
PASS_ON = {
    "FLPG_HEARTBEAT",
    "FLPG_OFFLINE_AFTER",
    "FLPG_LEASE",
    "FLPG_POLL",
    "FLPG_SWEEP",
    "FLPG_PG_BINDIR",
}
"""The caller's `FLPG_*` variables that reach the workers (the database, home and
cache are the harness's own)."""
Progress = Callable[[str], None]


class ConfigTimeout(HarnessError):
    """The configuration ran past its time budget."""


def flpg_executable() -> str:
    """The `flpg` script next to this interpreter (the project's venv), or on PATH."""
    candidate = Path(sys.executable).parent / "flpg"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("flpg")
    if found is None:
        raise HarnessError(f"no flpg command next to {sys.executable} or on PATH")
    return found


def query(url: str, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def poll(
    url: str, sql: str, deadline: Deadline, params: Sequence[Any] | None = None
) -> list[tuple[Any, ...]]:
    """`query`, retried while the server refuses the harness's connection (say, "too
    many clients" when the workers hold every slot) and `deadline` allows; then
    HarnessError naming the server's answer."""
    while True:
        try:
            return query(url, sql, params)
        except psycopg.OperationalError as exc:
            if deadline.remaining() <= 0:
                raise HarnessError(f"the harness cannot query the database: {exc}") from exc
            time.sleep(0.5)


@dataclass
class Deadline:
    """The time budget of one configuration."""

    seconds: float
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.monotonic()

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise ConfigTimeout(f"timed out after {self.seconds:g} s while {what}")


class FlpgFederation:
    """The workers of one configuration, on database `url`."""

    def __init__(
        self,
        name: str,
        url: str,
        workdir: Path,
        security: str = "admin",
        policy_sql: str | None = None,
    ) -> None:
        self.flpg = flpg_executable()
        self.url = url
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLPG_") or k in PASS_ON}
        env["FLPG_DATABASE_URL"] = url
        env["FLPG_CACHE_DIR"] = str(workdir / "cache")
        env["FLPG_HOME"] = str(workdir / "home")
        self.procs = ProcessSet(name, workdir / "logs", env, workdir)
        self.security = WorkerSecurity(
            security, self.flpg, url, self.procs, workdir / "creds", policy_sql
        )
        self.link: Proc | None = None
        self.exec: Proc | None = None
        self.nodes: list[Proc] = []

    def migrate(self) -> None:
        done = self.procs.run([self.flpg, "db", "upgrade", "--db", self.url], timeout=120)
        if done.returncode != 0:
            raise HarnessError(f"flpg db upgrade exited {done.returncode}: {done.stderr.strip()}")
        self.security.after_migrate()

    def start_control(self) -> None:
        link_args = self.security.worker_args("link")
        exec_args = self.security.worker_args("exec")
        self.link = self.procs.start("link", [self.flpg, "link", *link_args])
        self.exec = self.procs.start("exec", [self.flpg, "exec", "--max-runs", "1", *exec_args])

    def start_node(self, name: str, partition: int, partitions: int, log_name: str) -> Proc:
        config = f"partition-id={partition} num-partitions={partitions}"
        argv = [self.flpg, "node", "--name", name, *self.security.node_args(name, config)]
        proc = self.procs.start(log_name, argv)
        self.nodes.append(proc)
        return proc

    def has_virtual_option(self) -> bool:
        """Whether this flpg's `flpg node` takes `--virtual N` (one worker, N node ids)."""
        done = self.procs.run([self.flpg, "node", "--help"], timeout=60)
        return "--virtual" in done.stdout

    def start_virtual(self, count: int, concurrency: int) -> tuple[Proc, str]:
        """One worker process serving `count` node ids: `flpg node --virtual` when
        this flpg has it, else `virtual_nodes.py` (flpg's NodeWorker with `count`
        specs). Returns the process and which of the two it is."""
        if self.has_virtual_option():
            how = "flpg node --virtual"
            argv = [self.flpg, "node", "--name", "v", "--virtual", str(count)]
        else:
            how = "harness/virtual_nodes.py"
            argv = [sys.executable, str(VIRTUAL_NODES), "--db", self.url, "--count", str(count)]
        proc = self.procs.start("node-virtual", [*argv, "--concurrency", str(concurrency)])
        self.nodes.append(proc)
        return proc, how

    def server_roots(self) -> list[int]:
        return [p.pid for p in (self.link, self.exec) if p is not None]

    def serverapp_roots(self) -> list[int]:
        """The ServerApp processes (the exec worker's children) alone."""
        return [] if self.exec is None else children_map().get(self.exec.pid, [])

    def wait_online(self, count: int, deadline: Deadline) -> None:
        while True:
            self.procs.check_alive()
            rows = poll(self.url, "SELECT count(*) FROM nodes WHERE status = 'online'", deadline)
            if rows[0][0] >= count:
                return
            if deadline.remaining() <= 0:
                raise ConfigTimeout(
                    f"only {rows[0][0]} of {count} nodes online after {deadline.seconds:g} s\n"
                    + self.procs.log_tails()
                )
            time.sleep(0.1)

    def submit(self, run_config: str, *more: str) -> tuple[int, float]:
        """Submit the bench app with `run_config` and then each of `more` (blank ones
        skipped) as `--run-config` values, a later one winning a key; (run id,
        wall-clock time the submit command started)."""
        t_submit = time.time()
        configs = [c for text in (run_config, *more) if text.strip() for c in ("-c", text)]
        argv = [self.flpg, "run", str(APP_DIR), *configs, "--format", "json"]
        done = self.procs.run(argv, timeout=300)
        if done.returncode != 0:
            raise HarnessError(f"flpg run exited {done.returncode}: {done.stderr.strip()}")
        return int(json.loads(done.stdout)["run_id"]), t_submit

    def wait_run(self, run_id: int, deadline: Deadline) -> None:
        while True:
            self.procs.check_alive()
            low = memory_low()
            if low is not None:
                raise HarnessError(f"run {run_id}: {low}")
            rows = poll(
                self.url, "SELECT status, reason FROM runs WHERE id = %s", deadline, [run_id]
            )
            status, reason = rows[0]
            if status == "finished":
                return
            if status in TERMINAL:
                raise HarnessError(f"run {run_id} {status}: {reason}\n{self.run_log(run_id)}")
            if deadline.remaining() <= 0:
                raise ConfigTimeout(
                    f"run {run_id} still {status} after {deadline.seconds:g} s\n"
                    f"{self.run_log(run_id)}"
                )
            time.sleep(0.25)

    def run_log(self, run_id: int, lines: int = 15) -> str:
        rows = query(
            self.url,
            "SELECT stream, line FROM (SELECT id, stream, line FROM run_logs WHERE run_id = %s "
            "ORDER BY id DESC LIMIT %s) t ORDER BY id",
            [run_id, lines],
        )
        return "\n".join(f"[{stream}] {line}" for stream, line in rows)

    def stop(self) -> list[str]:
        # Nodes (they hand back claims) and exec together, the link last. Each takes
        # up to one poll interval (FLPG_POLL, 5 s) to notice SIGTERM.
        return self.procs.stop(order=[["node", "exec"]])
