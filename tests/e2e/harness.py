"""A small harness for end-to-end tests with real `flpg` OS processes.

`Federation` starts `flpg link`, `flpg exec` and `flpg node` as subprocesses (each
in its own session, output to a log file), runs one-shot CLI commands, waits for
nodes and runs with bounded timeouts, and at teardown terminates every process it
started (SIGTERM, then SIGKILL after a grace period). It also finds processes it
did not start directly but that carry its tag in their environment (ServerApps
launched by an exec worker, which live in their own sessions) and kills those too,
so a test can assert that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from flpg.states import TERMINAL, NodeStatus

TAG_ENV = "FLPG_E2E_HARNESS_TAG"
"""Set in every process the harness starts; inherited by the ServerApps they launch."""

APPS = Path(__file__).resolve().parent / "apps"


def flpg_executable() -> str:
    """The `flpg` script of the interpreter running the tests (the project's venv)."""
    candidate = Path(sys.executable).parent / "flpg"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("flpg")
    if not found:
        raise RuntimeError("the flpg command is not installed next to the test interpreter")
    return found


class HarnessError(AssertionError):
    """A wait timed out or a process misbehaved; the message carries the logs."""


@dataclass
class Proc:
    """One long-running flpg process."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@dataclass
class CliResult:
    """The outcome of one `flpg ...` command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


@dataclass
class StopReport:
    """What teardown found: per process its exit code and whether it had to be killed."""

    exit_codes: dict[str, int | None] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    left: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every process exited by itself on SIGTERM with code 0 and nothing strayed."""
        return (
            not self.killed
            and not self.strays
            and not self.left
            and all(code == 0 for code in self.exit_codes.values())
        )


@dataclass
class FinishedRun:
    """A run of the deterministic app, done by real processes that have since stopped.

    The same federation then ran apps/faulty with a ClientApp that raises on
    partition 1 (`faulty_run_id`), so the database also holds an error reply."""

    url: str
    run_id: int
    faulty_run_id: int
    fed: Federation
    stream: CliResult
    stop_report: StopReport


class Federation:
    """The flpg processes of one test, sharing one database (from `env`)."""

    def __init__(self, env: dict[str, str], workdir: Path, *, grace: float = 15.0) -> None:
        self.tag = uuid.uuid4().hex
        self.env = {**env, TAG_ENV: self.tag}
        self.url = env["FLPG_DATABASE_URL"]
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.grace = grace
        self.procs: list[Proc] = []
        self.flpg = flpg_executable()
        self._cli_count = 0

    # ------------------------------------------------------------ processes

    def start(self, name: str, *args: str) -> Proc:
        """Start `flpg ARGS...` in the background, output to logs/NAME.log."""
        if any(p.name == name for p in self.procs):
            raise ValueError(f"a process named {name!r} was already started")
        argv = [self.flpg, *args]
        log_path = self.logdir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, argv, popen, log_path)
        self.procs.append(proc)
        return proc

    def link(self, name: str = "link") -> Proc:
        return self.start(name, "link")

    def exec(self, name: str = "exec", *, max_runs: int = 4) -> Proc:
        return self.start(name, "exec", "--max-runs", str(max_runs))

    def node(
        self,
        name: str,
        node_config: str = "",
        *,
        concurrency: int | None = None,
        proc_name: str = "",
    ) -> Proc:
        args = ["node", "--name", name, "--node-config", node_config]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        return self.start(proc_name or f"node-{name}", *args)

    def federation(self, num_nodes: int = 2, *, concurrency: int | None = None) -> list[Proc]:
        """Start a link, an exec and `num_nodes` nodes with partition-ids 0..n-1;
        wait until all nodes are online."""
        procs = [self.link(), self.exec()]
        for i in range(num_nodes):
            procs.append(
                self.node(
                    f"node{i}",
                    f"partition-id={i} num-partitions={num_nodes}",
                    concurrency=concurrency,
                )
            )
        self.wait_nodes_online(num_nodes)
        return procs

    def check_alive(self) -> None:
        """Raise HarnessError if a started process has exited."""
        dead = [p for p in self.procs if p.exit_code is None and not p.alive()]
        if dead:
            raise HarnessError(
                "process(es) exited unexpectedly: "
                + ", ".join(f"{p.name} (exit {p.popen.returncode})" for p in dead)
                + "\n"
                + self.logs()
            )

    def logs(self, lines: int = 25) -> str:
        """The last lines of every process's log, for failure messages."""
        return "\n".join(f"===== {p.name} ({p.log_path})\n{p.tail(lines)}" for p in self.procs)

    # ------------------------------------------------------------ teardown

    def stop(self, procs: Iterable[Proc]) -> StopReport:
        """SIGTERM the given processes (their whole process groups), wait up to `grace`
        s, SIGKILL what is left."""
        report = StopReport()
        procs = [p for p in procs if p.exit_code is None]
        for proc in procs:
            if proc.alive():
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in procs:
            try:
                proc.popen.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.killed = True
                report.killed.append(proc.name)
                try:
                    proc.popen.wait(5)
                except subprocess.TimeoutExpired:
                    report.left.append(proc.pid)
            proc.exit_code = proc.popen.returncode
            report.exit_codes[proc.name] = proc.exit_code
        return report

    def kill(self, proc: Proc) -> int:
        """SIGKILL a process (its whole process group) on purpose, as a crash would;
        returns its exit code. It no longer counts as a process that should be alive."""
        _signal_group(proc.pid, signal.SIGKILL)
        proc.exit_code = proc.popen.wait(10)
        proc.killed = True
        return proc.exit_code

    def stop_all(self) -> StopReport:
        """Stop every process: nodes and execs first, links last; then kill strays
        (processes carrying this harness's tag, e.g. orphaned ServerApps)."""
        links = [p for p in self.procs if p.argv[1:2] == ["link"]]
        others = [p for p in self.procs if p not in links]
        report = self.stop(others)
        linked = self.stop(links)
        report.exit_codes.update(linked.exit_codes)
        report.killed += linked.killed
        report.left += linked.left
        strays = self.tagged_pids()
        for pid in strays:
            report.strays.append(f"pid {pid}: {_cmdline(pid)}")
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.tagged_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        report.left += self.tagged_pids()
        return report

    def tagged_pids(self) -> list[int]:
        """Live processes (not zombies) whose environment carries this harness's tag."""
        needle = f"{TAG_ENV}={self.tag}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path("/proc", entry, "environ").read_bytes()
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
            if state == "Z":
                continue
            if needle in environ.split(b"\0"):
                found.append(int(entry))
        return found

    # ------------------------------------------------------------ CLI

    def cli(
        self,
        *args: str,
        timeout: float = 60,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> CliResult:
        """Run `flpg ARGS...` to completion; HarnessError on a timeout, or on a
        non-zero exit when `check`."""
        argv = [self.flpg, *args]
        self._cli_count += 1
        try:
            done = subprocess.run(
                argv,
                env=env if env is not None else self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(
                f"`{' '.join(argv)}` did not finish within {timeout:g} s\n{self.logs()}"
            ) from exc
        result = CliResult(argv, done.returncode, done.stdout, done.stderr)
        if check and result.returncode != 0:
            raise HarnessError(f"command failed:\n{result}\n{self.logs()}")
        return result

    def nodes(self) -> list[dict[str, Any]]:
        """`flpg nodes --format json`."""
        data: list[dict[str, Any]] = self.cli("nodes", "--format", "json").json()
        return data

    def runs(self) -> list[dict[str, Any]]:
        """`flpg ls --format json` (newest first)."""
        data: list[dict[str, Any]] = self.cli("ls", "--format", "json").json()
        return data

    def run_info(self, run_id: int) -> dict[str, Any]:
        """The run as `flpg ls --format json` reports it."""
        for run in self.runs():
            if run["run_id"] == run_id:
                return run
        raise HarnessError(f"run {run_id} is not listed by `flpg ls`")

    def submit(self, app_dir: Path, *extra: str) -> int:
        """`flpg run APP_DIR --format json EXTRA...`; returns the run id."""
        result = self.cli("run", str(app_dir), "--format", "json", *extra)
        return int(result.json()["run_id"])

    def wait_nodes_online(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until at least `count` nodes are online (per `flpg nodes`)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            online = [n for n in self.nodes() if n["status"] == NodeStatus.ONLINE]
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"only {len(online)} of {count} node(s) online after {timeout:g} s\n"
                    + self.logs()
                )
            time.sleep(0.2)

    def wait_run(
        self, run_id: int, timeout: float = 60, statuses: Collection[str] = TERMINAL
    ) -> dict[str, Any]:
        """Wait until run `run_id` has one of `statuses` (default: any terminal one);
        returns its `flpg ls` entry. Fails early if a worker process died."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            run = self.run_info(run_id)
            if run["status"] in statuses:
                return run
            if run["status"] in TERMINAL:
                raise HarnessError(
                    f"run {run_id} ended {run['status']} ({run['reason']}), "
                    f"expected {sorted(statuses)}\n{self.log_of(run_id)}\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"run {run_id} still {run['status']} after {timeout:g} s, expected "
                    f"{sorted(statuses)}\n{self.log_of(run_id)}\n{self.logs()}"
                )
            time.sleep(0.25)

    def log_of(self, run_id: int) -> str:
        """`flpg log RUN --show` (stdout): what is stored now, even of a running run."""
        return self.cli("log", str(run_id), "--show", check=False).stdout

    # ------------------------------------------------------------ SQL

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[Any]:
        """Rows of one query against the federation's database."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        rows = self.sql(query, params)
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _cmdline(pid: int) -> str:
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate()` until it returns something truthy; HarnessError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
