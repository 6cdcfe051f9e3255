"""Benchmark: how well concurrent runs overlap on one shared flpg federation.

What it measures
----------------
A local federation (1 `flpg link`, 1 `flpg exec --max-runs 8`, 4 `flpg node`
workers `node0`..`node3` with `--concurrency 8`) runs the app in
`benchmarks/apps/bench` (FedAvg on a float32 vector of `--model-floats` entries;
each node sleeps `--train-seconds` per round to stand in for local training). For
each k in `--runs` (default 1,2,4,8) k identical runs are submitted at once with
`flpg run` and awaited; then, from the database's own timestamps:

- total wall s: first run's `submitted_at` to the last run's `finished_at`;
- mean per-run round s: per run, (last train round's `round_metrics.recorded_at`
  minus its first instruction's `messages.created_at`) / rounds, averaged over the
  k runs (the consecutive round records telescope to this);
- serial estimate s: k x the total wall of k=1 (what running them one after
  another would take); overlap factor: serial estimate / total wall (k means
  perfect overlap, 1 means none);
- start latency s: mean over the runs of `started_at - submitted_at` (the exec
  claiming the run and launching its ServerApp), and first push s: mean of
  `submitted_at` to the run's first instruction (ServerApp start-up, app import,
  waiting for nodes, writing the initial arrays);
- submit spread s: last minus first `submitted_at` of the batch (k `flpg run`
  processes start at once and compete for the CPU, so the submissions are spread).

Before the measured batches one unmeasured 1-round warm-up run fills the nodes'
app cache (disable with `--no-warmup`). Every run must finish: a failed or stopped
run, or a worker process that dies, aborts the benchmark with the run's reason and
the tails of the logs. The ServerApp checks the final model value, so a finished
run also computed the right result.

How to run it
-------------
From the repository root, with the project's venv::

    .venv/bin/python benchmarks/concurrent_runs.py
    .venv/bin/python benchmarks/concurrent_runs.py --runs 1,2,4 --rounds 5 \\
        --model-floats 1000000 --train-seconds 0.2

It starts a private throwaway PostgreSQL cluster in a temporary directory (or uses
`--db URL`, which should name an empty database dedicated to the benchmark),
migrates the schema, starts the workers with short bus intervals (FLPG_HEARTBEAT=0.5,
FLPG_OFFLINE_AFTER=5, FLPG_LEASE=10, FLPG_POLL=1, FLPG_SWEEP=0.2; set any of them in
the environment to override), and on exit (also on Ctrl-C, SIGTERM or an error)
stops every process it started, kills any process still carrying its tag (e.g. an
orphaned ServerApp or ClientApp), destroys the cluster and removes the temporary
directory (keep the worker logs with `--keep-logs`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from harness.flpg_side import flpg_executable
from harness.procs import Proc, cmdline, signal_group

from flpg.local.cluster import Cluster

ROOT = Path(__file__).resolve().parent
APP_DIR = ROOT / "apps" / "bench"
NUM_NODES = 4
NODE_CONCURRENCY = 8
EXEC_MAX_RUNS = 8
TAG_ENV = "FLPG_BENCH_TAG"
"""Set in every process the benchmark starts; inherited by ServerApps and ClientApps."""

# Short bus intervals (like tests/conftest.py TEST_ENV), with a little more slack
# for liveness and leases: on a small machine 8 concurrent runs keep every core
# busy, and a heartbeat that is a second late must not mark a node offline.
BENCH_ENV = {
    "FLPG_HEARTBEAT": "0.5",
    "FLPG_OFFLINE_AFTER": "5",
    "FLPG_LEASE": "10",
    "FLPG_POLL": "1",
    "FLPG_SWEEP": "0.2",
}
TERMINAL = ("finished", "failed", "stopped")


class BenchmarkError(Exception):
    """The benchmark cannot go on; the message says why (with log tails)."""


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived; unwind and clean up as for Ctrl-C."""


# ------------------------------------------------------------------ processes


class Federation:
    """The worker processes of the benchmark and the environment they share."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.flpg = flpg_executable()
        self.url = url
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLPG_")}
        # The intervals may be overridden from the caller's environment.
        env.update({k: os.environ.get(k, v) for k, v in BENCH_ENV.items()})
        env["FLPG_DATABASE_URL"] = url
        env["FLPG_CACHE_DIR"] = str(workdir / "cache")
        env["FLPG_HOME"] = str(workdir / "home")
        env[TAG_ENV] = self.tag
        self.env = env
        self.procs: list[Proc] = []

    def start(self, name: str, *args: str) -> Proc:
        log_path = self.logdir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [self.flpg, *args],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop them in order
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run `flpg ARGS...` to completion; its stdout, or BenchmarkError."""
        argv = [self.flpg, *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchmarkError(f"`{' '.join(argv)}` did not finish in {timeout:g} s") from exc
        if done.returncode != 0:
            raise BenchmarkError(
                f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout

    def start_workers(self) -> None:
        self.start("link", "link")
        self.start("exec", "exec", "--max-runs", str(EXEC_MAX_RUNS))
        for i in range(NUM_NODES):
            self.start(
                f"node{i}",
                "node",
                "--name",
                f"node{i}",
                "--node-config",
                f"partition-id={i} num-partitions={NUM_NODES}",
                "--concurrency",
                str(NODE_CONCURRENCY),
            )

    def check_alive(self) -> None:
        dead = [p for p in self.procs if p.popen.poll() is not None]
        if dead:
            raise BenchmarkError(
                "worker process(es) exited unexpectedly: "
                + ", ".join(f"{p.name} (exit {p.popen.returncode})" for p in dead)
                + "\n"
                + self.log_tails()
            )

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(f"===== {p.name} ({p.log_path})\n{p.tail(lines)}" for p in self.procs)

    def stop_all(self, grace: float = 15.0) -> list[str]:
        """SIGTERM nodes and exec, then the link (whole process groups), SIGKILL after
        `grace` s; then kill any process still carrying our tag. Returns what had to
        be killed."""
        killed: list[str] = []
        links = [p for p in self.procs if p.name == "link"]
        others = [p for p in self.procs if p.name != "link"]
        for group in (others, links):
            for proc in group:
                if proc.popen.poll() is None:
                    signal_group(proc.popen.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for proc in group:
                try:
                    proc.popen.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    signal_group(proc.popen.pid, signal.SIGKILL)
                    killed.append(proc.name)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(5)
        for pid in self.tagged_pids():
            killed.append(f"stray pid {pid}: {cmdline(pid)}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.tagged_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        killed += [f"still alive: pid {pid}" for pid in self.tagged_pids()]
        return killed

    def tagged_pids(self) -> list[int]:
        """Live (not zombie) processes whose environment carries this benchmark's tag."""
        needle = f"{TAG_ENV}={self.tag}".encode()
        found: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path("/proc", entry, "environ").read_bytes()
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
            if state != "Z" and needle in environ.split(b"\0"):
                found.append(int(entry))
        return found


# ------------------------------------------------------------------ database


def query(url: str, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def wait_nodes_online(fed: Federation, timeout: float = 60) -> None:
    names = [f"node{i}" for i in range(NUM_NODES)]
    deadline = time.monotonic() + timeout
    while True:
        fed.check_alive()
        rows = query(
            fed.url,
            "SELECT count(*) FROM nodes WHERE name = ANY(%s) AND status = 'online'",
            [names],
        )
        if rows[0][0] == NUM_NODES:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"only {rows[0][0]} of {NUM_NODES} nodes online after {timeout:g} s\n"
                + fed.log_tails()
            )
        time.sleep(0.2)


def run_log(url: str, run_id: int, lines: int = 30) -> str:
    rows = query(
        url,
        "SELECT stream, line FROM (SELECT id, stream, line FROM run_logs WHERE run_id = %s "
        "ORDER BY id DESC LIMIT %s) t ORDER BY id",
        [run_id, lines],
    )
    return "\n".join(f"[{stream}] {line}" for stream, line in rows)


def batch_report(url: str, run_ids: list[int]) -> str:
    """Per run: status and its timeline relative to submission, for failure messages."""
    rows = query(
        url,
        """
        SELECT r.id, r.status, r.submitted_at,
               extract(epoch FROM r.started_at - r.submitted_at),
               extract(epoch FROM (SELECT min(l.ts) FROM run_logs l WHERE l.run_id = r.id)
                                  - r.started_at),
               extract(epoch FROM r.heartbeat_at - r.started_at),
               extract(epoch FROM r.finished_at - r.submitted_at),
               r.reason
        FROM runs r WHERE r.id = ANY(%s) ORDER BY r.id
        """,
        [run_ids],
    )

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{float(value):.2f}"

    return "\n".join(
        f"run {rid} {status}: submitted {submitted:%H:%M:%S.%f}, started +{fmt(start)} s, "
        f"first ServerApp output {fmt(first)} s after start, last heartbeat "
        f"{fmt(beat)} s after start, ended +{fmt(end)} s" + (f" ({reason})" if reason else "")
        for rid, status, submitted, start, first, beat, end, reason in rows
    )


# ------------------------------------------------------------------ one batch


@dataclass(frozen=True)
class RunTiming:
    run_id: int
    submitted_at: datetime
    started_at: datetime
    finished_at: datetime
    first_push: datetime
    round_seconds: list[float]


@dataclass(frozen=True)
class BatchResult:
    k: int
    runs: list[RunTiming]

    @property
    def wall(self) -> float:
        first = min(r.submitted_at for r in self.runs)
        last = max(r.finished_at for r in self.runs)
        return (last - first).total_seconds()

    @property
    def mean_round(self) -> float:
        return _mean([_mean(r.round_seconds) for r in self.runs])

    @property
    def start_latency(self) -> float:
        return _mean([(r.started_at - r.submitted_at).total_seconds() for r in self.runs])

    @property
    def first_push_latency(self) -> float:
        return _mean([(r.first_push - r.submitted_at).total_seconds() for r in self.runs])

    @property
    def submit_spread(self) -> float:
        times = [r.submitted_at for r in self.runs]
        return (max(times) - min(times)).total_seconds()


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def submit_batch(fed: Federation, k: int, run_config: str) -> list[int]:
    """Start k `flpg run` commands at once; return their run ids."""
    argv = [
        fed.flpg,
        "run",
        str(APP_DIR),
        "--run-config",
        run_config,
        "--nodes",
        ",".join(f"node{i}" for i in range(NUM_NODES)),
        "--format",
        "json",
    ]
    procs = [
        subprocess.Popen(
            argv,
            env=fed.env,
            cwd=fed.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(k)
    ]
    run_ids: list[int] = []
    errors: list[str] = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                errors.append(f"`flpg run` did not finish in 120 s: {err.strip()}")
                continue
            if proc.returncode != 0:
                errors.append(f"`flpg run` exited {proc.returncode}: {err.strip()}")
                continue
            run_ids.append(int(json.loads(out)["run_id"]))
    finally:
        for proc in procs:  # interrupted: end the submissions still in flight
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise BenchmarkError("submitting failed:\n" + "\n".join(errors))
    return run_ids


def wait_runs(fed: Federation, run_ids: list[int], timeout: float) -> None:
    """Poll `runs` until every run finished; BenchmarkError on any other ending."""
    deadline = time.monotonic() + timeout
    while True:
        fed.check_alive()
        rows = query(
            fed.url, "SELECT id, status, reason FROM runs WHERE id = ANY(%s) ORDER BY id", [run_ids]
        )
        bad = [(rid, status, reason) for rid, status, reason in rows if status in TERMINAL[1:]]
        if bad:
            rid, status, reason = bad[0]
            raise BenchmarkError(
                f"run {rid} {status}: {reason}\n"
                + "".join(f"run {r} {s}: {why}\n" for r, s, why in bad[1:])
                + f"----- the batch's runs\n{batch_report(fed.url, run_ids)}\n"
                + f"----- ServerApp log of run {rid}\n{run_log(fed.url, rid)}\n"
                + fed.log_tails()
            )
        if all(status == "finished" for _, status, _ in rows) and len(rows) == len(run_ids):
            return
        if time.monotonic() > deadline:
            states = ", ".join(f"{rid}:{status}" for rid, status, _ in rows)
            raise BenchmarkError(
                f"runs not finished after {timeout:g} s ({states})\n" + fed.log_tails()
            )
        time.sleep(0.2)


def timings(url: str, run_ids: list[int], rounds: int) -> list[RunTiming]:
    rows = query(
        url,
        """
        SELECT r.id, r.submitted_at, r.started_at, r.finished_at,
               (SELECT min(m.created_at) FROM messages m
                WHERE m.run_id = r.id AND m.reply_to IS NULL) AS first_push,
               (SELECT array_agg(rm.recorded_at ORDER BY rm.round) FROM round_metrics rm
                WHERE rm.run_id = r.id AND rm.phase = 'train') AS train_rounds
        FROM runs r WHERE r.id = ANY(%s) ORDER BY r.id
        """,
        [run_ids],
    )
    out: list[RunTiming] = []
    for run_id, submitted, started, finished, first_push, recorded in rows:
        if first_push is None or not recorded or len(recorded) != rounds:
            raise BenchmarkError(
                f"run {run_id} finished without the expected records: first instruction "
                f"{first_push}, {len(recorded or [])} train round(s) of {rounds}"
            )
        marks = [first_push, *recorded]
        seconds = [(b - a).total_seconds() for a, b in pairwise(marks)]
        out.append(RunTiming(run_id, submitted, started, finished, first_push, seconds))
    return out


def run_batch(fed: Federation, k: int, run_config: str, rounds: int, timeout: float) -> BatchResult:
    run_ids = submit_batch(fed, k, run_config)
    wait_runs(fed, run_ids, timeout)
    return BatchResult(k, timings(fed.url, run_ids, rounds))


# ------------------------------------------------------------------ output


COLUMNS = [
    "concurrent runs",
    "total wall s",
    "mean per-run round s",
    "serial estimate s",
    "overlap factor",
    "start latency s",
    "first push s",
    "submit spread s",
]


def table_rows(results: list[BatchResult]) -> list[list[str]]:
    base = next((r.wall for r in results if r.k == 1), None)
    rows: list[list[str]] = []
    for r in results:
        serial = r.k * base if base is not None else None
        rows.append(
            [
                str(r.k),
                f"{r.wall:.2f}",
                f"{r.mean_round:.2f}",
                f"{serial:.2f}" if serial is not None else "n/a",
                f"{serial / r.wall:.2f}" if serial is not None else "n/a",
                f"{r.start_latency:.2f}",
                f"{r.first_push_latency:.2f}",
                f"{r.submit_spread:.2f}",
            ]
        )
    return rows


def print_table(title: str, rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
        print(title)
        print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
        for row in rows:
            print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title, header_style="bold")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure how concurrent flpg runs overlap on one shared federation."
    )
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds per run.")
    parser.add_argument(
        "--model-floats", type=int, default=100_000, help="float32 entries in the model."
    )
    parser.add_argument(
        "--train-seconds", type=float, default=0.5, help="ClientApp sleep per round."
    )
    parser.add_argument(
        "--runs", default="1,2,4,8", help="Comma-separated batch sizes (concurrent runs)."
    )
    parser.add_argument("--db", metavar="URL", help="Use this (empty) database, no own cluster.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait for one batch.")
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="One unmeasured 1-round run first.",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="Keep the temp dir with the worker logs."
    )
    args = parser.parse_args(argv)
    try:
        args.batches = [int(x) for x in args.runs.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--runs must be comma-separated integers, got {args.runs!r}")
    if not args.batches or any(k < 1 or k > EXEC_MAX_RUNS for k in args.batches):
        parser.error(f"--runs values must be 1..{EXEC_MAX_RUNS}")
    if args.rounds < 1 or args.model_floats < 1 or args.train_seconds < 0:
        parser.error("--rounds and --model-floats must be >= 1, --train-seconds >= 0")
    return args


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP while cleaning up, so a second one cannot
    leave workers or the cluster running."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def database(db: str | None, workdir: Path) -> Iterator[str]:
    """The URL to use: `db`, or a throwaway cluster under `workdir` (destroyed after)."""
    if db:
        yield db
        return
    cluster = Cluster(workdir / "pg")
    try:
        progress(f"starting a throwaway PostgreSQL cluster in {cluster.root}")
        yield cluster.ensure_running()
    finally:
        with uninterruptible():
            progress("destroying the PostgreSQL cluster")
            cluster.destroy()


def benchmark(args: argparse.Namespace, workdir: Path) -> list[BatchResult]:
    with database(args.db, workdir) as url:
        fed = Federation(url, workdir)
        try:
            progress("migrating the schema")
            fed.cli("db", "upgrade", "--db", url)
            fed.start_workers()
            wait_nodes_online(fed)
            progress(f"federation up: 1 link, 1 exec, {NUM_NODES} nodes")
            config = (
                f"num-server-rounds={args.rounds} model-floats={args.model_floats} "
                f"train-seconds={args.train_seconds} min-nodes={NUM_NODES}"
            )
            if args.warmup:
                progress("warm-up run (1 round, not measured)")
                warm = f"num-server-rounds=1 model-floats={args.model_floats} train-seconds=0"
                run_batch(fed, 1, warm, 1, args.timeout)
            results: list[BatchResult] = []
            for k in args.batches:
                began = time.monotonic()
                result = run_batch(fed, k, config, args.rounds, args.timeout)
                results.append(result)
                progress(
                    f"k={k}: runs {[r.run_id for r in result.runs]} finished, "
                    f"wall {result.wall:.2f} s (client-side {time.monotonic() - began:.2f} s)"
                )
            return results
        finally:
            with uninterruptible():
                progress("stopping the workers")
                killed = fed.stop_all()
                if killed:
                    progress("had to kill: " + "; ".join(killed))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    # The cluster may run as an unprivileged account (when we are root); let it
    # traverse the temp dir (it is still unreadable to others).
    workdir = Path(tempfile.mkdtemp(prefix="flpg-bench-"))
    os.chmod(workdir, 0o711)
    try:
        results = benchmark(args, workdir)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("benchmark interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            progress(f"logs kept in {workdir / 'logs'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    title = (
        f"{NUM_NODES} nodes x concurrency {NODE_CONCURRENCY}, exec --max-runs {EXEC_MAX_RUNS}; "
        f"{args.rounds} rounds, {args.model_floats} float32, train {args.train_seconds} s; "
        f"{os.cpu_count()} CPUs"
    )
    print_table(title, table_rows(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
