"""Benchmark: wall time to a target accuracy, synchronous FedAvg against FedBuff, on a
federation with one slow node.

What it measures
----------------
A local federation (1 `flpg link`, 1 `flpg exec`, 4 `flpg node` workers `node0`..`node3`,
one process each) runs `benchmarks/apps/digits_async`: the digits example (a numpy MLP
on scikit-learn's 8x8 digits, IID partitions, centralised evaluation on the held-out
test set after every server update). Every training sleeps `--train-seconds` x the
node's `slowdown` first (node config; node3 has `--slowdown`, the others 1), standing in
for slower hardware. The same app runs once with FedAvg (every round waits for node3)
and once with FedBuff (`--buffer-size` replies per update, all 4 nodes kept busy,
staleness weight 1/sqrt(1 + tau)). From the database's own timestamps, per run:

- time to each target: from the run's first instruction (`messages.created_at`) to the
  `round_metrics.recorded_at` of the first server evaluation whose `accuracy` reaches
  the target, and which round (FedAvg round or FedBuff update) that was;
- the final accuracy and the whole run (first instruction to `runs.finished_at`);
- first reply: first instruction to the first reply, mostly the nodes starting the
  run's ClientApp processes (paid by both strategies alike).

Before the measured runs one unmeasured 1-round FedAvg run with no sleep fills the
nodes' app cache.

How to run it
-------------
From the repository root, with the project's venv::

    .venv/bin/python benchmarks/async_vs_sync.py
    .venv/bin/python benchmarks/async_vs_sync.py --train-seconds 0.5 --slowdown 5 \\
        --targets 0.93,0.95 --fedavg-rounds 10 --fedbuff-rounds 60 --buffer-size 2

It starts a private throwaway PostgreSQL cluster in a temporary directory (or uses
`--db URL`, an empty database dedicated to the benchmark) and cleans up everything it
started on exit, as `concurrent_runs.py` does (whose process handling it shares).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from concurrent_runs import (
    NUM_NODES,
    BenchmarkError,
    Federation,
    Interrupted,
    _raise_interrupted,
    database,
    progress,
    query,
    uninterruptible,
    wait_nodes_online,
    wait_runs,
)

APP_SOURCE = Path(__file__).resolve().parent / "apps" / "digits_async"
DIGITS_TASK = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits" / "task.py"


def app_dir(workdir: Path) -> Path:
    """The benchmark's app, ready to submit: `apps/digits_async` with the digits
    example's own `task.py` (data and model) copied in, so both use the same code."""
    target = workdir / "digits_async"
    shutil.copytree(APP_SOURCE, target, dirs_exist_ok=True)
    shutil.copy(DIGITS_TASK, target / "digits_async" / "task.py")
    return target


SLOW_NODE = NUM_NODES - 1


@dataclass(frozen=True)
class RunOutcome:
    strategy: str
    run_id: int
    reached: dict[float, tuple[float, int] | None]
    """target -> (seconds from the first instruction, round), None if never reached."""
    final_accuracy: float
    rounds: int
    total: float
    first_reply: float
    """Seconds from the first instruction to the first reply (ClientApp start-up)."""


def start_federation(fed: Federation, slowdown: float) -> None:
    fed.start("link", "link")
    fed.start("exec", "exec", "--max-runs", "1")
    for i in range(NUM_NODES):
        speed = slowdown if i == SLOW_NODE else 1
        config = f"partition-id={i} num-partitions={NUM_NODES} slowdown={speed}"
        fed.start(f"node{i}", "node", "--name", f"node{i}", "--node-config", config)


def submit(fed: Federation, app: Path, run_config: str) -> int:
    nodes = ",".join(f"node{i}" for i in range(NUM_NODES))
    out = fed.cli("run", str(app), "--run-config", run_config, "--nodes", nodes, "--format", "json")
    return int(json.loads(out)["run_id"])


def outcome(url: str, strategy: str, run_id: int, targets: list[float]) -> RunOutcome:
    rows = query(
        url,
        """
        SELECT extract(epoch FROM rm.recorded_at - f.first), rm.round,
               (rm.metrics->>'accuracy')::float8,
               extract(epoch FROM r.finished_at - f.first),
               extract(epoch FROM f.reply - f.first)
        FROM round_metrics rm
        JOIN runs r ON r.id = rm.run_id
        CROSS JOIN (SELECT min(created_at) FILTER (WHERE reply_to IS NULL) AS first,
                           min(created_at) FILTER (WHERE reply_to IS NOT NULL) AS reply
                    FROM messages WHERE run_id = %(run)s) f
        WHERE rm.run_id = %(run)s AND rm.phase = 'server_evaluate' AND rm.round > 0
        ORDER BY rm.round
        """,
        {"run": run_id},
    )
    if not rows:
        raise BenchmarkError(f"run {run_id} recorded no server evaluation")
    reached: dict[float, tuple[float, int] | None] = {}
    for target in targets:
        hit = next((r for r in rows if r[2] >= target), None)
        reached[target] = None if hit is None else (float(hit[0]), int(hit[1]))
    last = rows[-1]
    return RunOutcome(
        strategy, run_id, reached, float(last[2]), int(last[1]), float(last[3]), float(last[4])
    )


def measure(args: argparse.Namespace, workdir: Path) -> list[RunOutcome]:
    with database(args.db, workdir) as url:
        fed = Federation(url, workdir)
        app = app_dir(workdir)
        try:
            progress("migrating the schema")
            fed.cli("db", "upgrade", "--db", url)
            start_federation(fed, args.slowdown)
            wait_nodes_online(fed)
            progress(f"federation up: {NUM_NODES} nodes, node{SLOW_NODE} {args.slowdown:g}x slower")
            common = f"train-seconds={args.train_seconds} min-nodes={NUM_NODES} seed={args.seed}"
            progress("warm-up run (not measured)")
            warm = submit(fed, app, "strategy='fedavg' num-server-rounds=1 train-seconds=0")
            wait_runs(fed, [warm], args.timeout)
            plans = [
                ("FedAvg", f"strategy='fedavg' num-server-rounds={args.fedavg_rounds}"),
                (
                    "FedBuff",
                    f"strategy='fedbuff' num-server-rounds={args.fedbuff_rounds} "
                    f"buffer-size={args.buffer_size}",
                ),
            ]
            results = []
            for _ in range(args.repeats):
                for name, config in plans:
                    run_id = submit(fed, app, f"{config} {common}")
                    began = time.monotonic()
                    wait_runs(fed, [run_id], args.timeout)
                    result = outcome(url, name, run_id, args.target_list)
                    results.append(result)
                    progress(
                        f"{name}: run {run_id} finished in {time.monotonic() - began:.1f} s, "
                        f"final accuracy {result.final_accuracy:.3f}"
                    )
            return results
        finally:
            with uninterruptible():
                progress("stopping the workers")
                killed = fed.stop_all()
                if killed:
                    progress("had to kill: " + "; ".join(killed))


def table(results: list[RunOutcome], targets: list[float]) -> str:
    head = ["strategy", "run", "first reply s"]
    for target in targets:
        head += [f"s to {target:g}", f"rounds to {target:g}"]
    head += ["rounds run", "final accuracy", "whole run s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.strategy, str(r.run_id), f"{r.first_reply:.1f}"]
        for target in targets:
            hit = r.reached[target]
            cells += ["not reached", "-"] if hit is None else [f"{hit[0]:.1f}", str(hit[1])]
        cells += [str(r.rounds), f"{r.final_accuracy:.3f}", f"{r.total:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="FedAvg vs FedBuff with one slow node.")
    parser.add_argument("--train-seconds", type=float, default=0.5, help="Sleep per training.")
    parser.add_argument("--slowdown", type=float, default=5.0, help="node3's sleep factor.")
    parser.add_argument("--targets", default="0.93,0.95", help="Comma-separated accuracies.")
    parser.add_argument("--fedavg-rounds", type=int, default=10)
    parser.add_argument("--fedbuff-rounds", type=int, default=60, help="FedBuff updates.")
    parser.add_argument("--buffer-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each strategy.")
    parser.add_argument("--db", metavar="URL", help="Use this (empty) database, no own cluster.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait for a run.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the worker logs.")
    args = parser.parse_args(argv)
    try:
        args.target_list = [float(x) for x in args.targets.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--targets must be comma-separated numbers, got {args.targets!r}")
    if args.train_seconds < 0 or args.slowdown < 1 or min(args.fedavg_rounds, args.repeats) < 1:
        parser.error("--train-seconds must be >= 0, --slowdown >= 1, rounds and repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="flpg-async-"))
    os.chmod(workdir, 0o711)  # the cluster may run as another account (when we are root)
    try:
        results = measure(args, workdir)
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
    print(
        f"{NUM_NODES} nodes, node{SLOW_NODE} {args.slowdown:g}x slower, train "
        f"{args.train_seconds:g} s x slowdown; FedBuff buffer {args.buffer_size}, concurrency "
        f"{NUM_NODES}; {os.cpu_count()} CPUs"
    )
    print(table(results, args.target_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
