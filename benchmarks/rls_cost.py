"""Benchmark: what row-level security costs flpg's hot paths (roles on against off).

What it measures
----------------
For each configuration, flpg runs twice in this invocation, on one private
PostgreSQL cluster, each time on a fresh database (`harness/flpg_side.py`), in
alternating order (off then on, then on then off for the next pair, ...) so that
noise from other work on the machine hits both variants:

- **on** (`security="roles"`): admin enrols a link, an exec and every node
  (`flpg link enroll`, `flpg exec enroll`, `flpg node enroll nodeI --node-config
  "partition-id=I num-partitions=N"`), and the workers run as those roles
  (`--credentials FILE`; a node worker with `--name nodeI` only);
- **off** (`security="no-rls"`): the workers connect as admin (`--db`), and row-level
  security is disabled on every table of the database, so no policy predicate runs.

In both, the run's ServerApp and ClientApps connect as their run roles (migration
0008), and the run is submitted as admin.

Configurations (`--configs`, in the order given): `NxSIZE` is FedAvg with N nodes and
a float32 model of SIZE (binary units), `--rounds` rounds, reported as the median
round time over rounds 2..R as `vs_flower.py` does; `claims` is the claim-throughput
burst of `FlpgSide.throughput` (`--throughput-messages` query messages to one node id
served by `--throughput-workers` node workers; rate from first push to last reply).
With `--pairs K` each configuration runs K on/off pairs; a variant's value is then
the median over its K runs.

The cost column is on/off - 1 for round times, and off rate / on rate - 1 for the
throughput (time per message). The pooled column is the same ratio of the medians of
every round 2..R of every run of a variant (every run's rate for the claims), with a
90 % interval from a bootstrap that resamples runs, then rounds within them
(`harness/stats.py`): many short runs and many rounds per run narrow it, e.g.
`--rounds 40 --pairs 5` for the small configurations.

`--policy-sql FILE` adds a third variant, **fix**: as on, with FILE run as admin in the
database right after migrating (a candidate policy change, measured before it becomes
a migration); its cost is fix/off - 1 likewise. Each pair then runs the three variants,
in reverse order every other time.

How to run it
-------------
From the repository root, with the project's venv::

    .venv/bin/python benchmarks/rls_cost.py
    .venv/bin/python benchmarks/rls_cost.py --configs 2x4B,8x128MB,claims,32x1MB --pairs 2
    .venv/bin/python benchmarks/rls_cost.py --policy-sql candidate.sql

Progress goes to stderr, the tables to stdout; `--json FILE` also writes every run
as it finishes. Everything runs in a temporary directory (kept with `--keep-logs`),
removed on exit with the cluster and every process and role it made.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cluster import BenchCluster
from harness.flpg_side import FlpgSide
from harness.procs import interrupt_on_signals, run_guarded
from harness.results import Config, Outcome, format_size, parse_size
from harness.stats import relative_cost
from harness.table import DASH, detail_table, render, secs

VARIANTS = {"off": "no-rls", "on": "roles", "fix": "roles"}
CLAIMS = "claims"
DEFAULT_CONFIGS = "2x4B,8x128MB,claims,32x1MB"


def progress(message: str) -> None:
    print(f"[rls_cost {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_configs(text: str, rounds: int, parser: argparse.ArgumentParser) -> list[Config | str]:
    """`2x4B,claims,...` -> FedAvg configs and the `claims` token, in order."""
    out: list[Config | str] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if item == CLAIMS:
            out.append(CLAIMS)
            continue
        nodes, _, size = item.partition("x")
        try:
            config = Config(int(nodes), parse_size(size), rounds)
        except ValueError:
            parser.error(f"--configs: {item!r} is neither NxSIZE (e.g. 8x128MB) nor {CLAIMS}")
        if config.nodes < 1:
            parser.error(f"--configs: {item!r} needs at least one node")
        out.append(config)
    if not out:
        parser.error("--configs names no configuration")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="flpg with row-level security on (enrolled roles) against off."
    )
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="NxSIZE items and 'claims'.")
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds per run.")
    parser.add_argument("--pairs", type=int, default=1, help="On/off pairs per configuration.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds per run.")
    parser.add_argument("--throughput-workers", type=int, default=1, help="Claims: workers.")
    parser.add_argument("--throughput-messages", type=int, default=2000, help="Claims: messages.")
    parser.add_argument(
        "--policy-sql", type=Path, default=None, help="Also measure 'fix': on + this SQL."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write every run here.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.pairs < 1 or args.throughput_workers < 1:
        parser.error("--rounds must be >= 2, --pairs and --throughput-workers >= 1")
    args.items = parse_configs(args.configs, args.rounds, parser)
    args.variants = ["off", "on"]
    args.sql = None
    if args.policy_sql is not None:
        try:
            args.sql = args.policy_sql.read_text()
        except OSError as exc:
            parser.error(f"--policy-sql: cannot read {args.policy_sql}: {exc.strerror}")
        args.variants.append("fix")
    return args


def label(item: Config | str) -> str:
    return "claims" if isinstance(item, str) else f"N={item.nodes} x {format_size(item.nbytes)}"


class RlsCost:
    """One invocation: the cluster, flpg's side and every run so far."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.cluster: BenchCluster | None = None
        self.side: FlpgSide | None = None
        self.runs: list[tuple[Config | str, str, Outcome]] = []
        self.pair = 0

    def setup(self) -> None:
        progress(f"starting a private PostgreSQL cluster in {self.workdir / 'pg'}")
        self.cluster = BenchCluster(self.workdir / "pg")
        self.side = FlpgSide(self.cluster, self.workdir, progress)

    def run_one(self, item: Config | str, variant: str) -> Outcome:
        assert self.side is not None
        security = VARIANTS[variant]
        self.side.policy_sql = self.args.sql if variant == "fix" else None
        if isinstance(item, str):
            outcome = self.side.throughput(
                self.args.throughput_workers,
                self.args.throughput_messages,
                self.args.timeout,
                security=security,
            )
        else:
            outcome = self.side.fedavg(item, self.args.timeout, security=security)
        outcome.system = f"flpg {variant}"
        return outcome

    def run_all(self) -> None:
        for item in self.args.items:
            for _ in range(self.args.pairs):
                variants = self.args.variants
                order = variants if self.pair % 2 == 0 else variants[::-1]
                self.pair += 1
                for variant in order:
                    progress(f"{label(item):>14} roles {variant}: running")
                    outcome = self.run_one(item, variant)
                    self.runs.append((item, variant, outcome))
                    progress(f"{label(item):>14} roles {variant}: {summary(outcome)}")
                    self.dump()

    def dump(self) -> None:
        if self.args.json is None:
            return
        rows = [
            {
                "config": label(item),
                "variant": variant,
                "status": o.status,
                "reason": o.reason[:2000],
                "round_seconds": o.round_seconds,
                "median_round": o.median_round,
                "extra": o.extra,
                "other_cpu": o.other_cpu,
                "note": o.note,
            }
            for item, variant, o in self.runs
        ]
        self.args.json.write_text(json.dumps(rows, indent=1))

    def values(self, item: Config | str, variant: str) -> list[float]:
        """The variant's value in each run that worked: median round s, or msg/s."""
        return [statistics.median(s) for s in self.samples(item, variant) if s]

    def samples(self, item: Config | str, variant: str) -> list[list[float]]:
        """The variant's values per run that worked: rounds 2..R, or the msg/s rate."""
        got: list[list[float]] = []
        for it, var, o in self.runs:
            if it == item and var == variant and o.ok:
                rate = o.extra.get("rate")
                got.append(
                    ([rate] if rate else []) if isinstance(item, str) else o.round_seconds[1:]
                )
        return got

    def pooled(self, item: Config | str) -> list[str]:
        """Each variant's pooled cost against off, with its 90 % interval."""
        off = self.samples(item, "off")
        costs = [
            relative_cost(off, self.samples(item, v), higher_is_better=isinstance(item, str))
            for v in self.args.variants[1:]
        ]
        return [DASH if c is None else c.text() for c in costs]

    def report(self) -> str:
        variants = self.args.variants
        fedavg_rows, claim_rows = [], []
        for item in dict.fromkeys(it for it, _, _ in self.runs):
            values = {v: self.values(item, v) for v in variants}
            if isinstance(item, str):
                claim_rows.append(claim_row(values, variants) + self.pooled(item))
            else:
                fedavg_rows.append(fedavg_row(item, values, variants) + self.pooled(item))
        pooled = [f"{v}/off pooled [90%]" for v in variants[1:]]
        headers = ["config", "off s", "on s", "on/off %"]
        headers += ["fix s", "fix/off %"] if "fix" in variants else []
        headers += [f"runs {v}" for v in variants] + pooled
        parts = [
            f"Median round over rounds 2..{self.args.rounds} (s); with several pairs, the "
            "median over runs (each run's value in the detail table).",
            "",
            render(headers, fedavg_rows),
        ]
        if claim_rows:
            claim_headers = ["config", "off msg/s", "on msg/s", "on cost %"]
            claim_headers += ["fix msg/s", "fix cost %"] if "fix" in variants else []
            claim_headers += [f"runs {v}" for v in variants] + pooled
            parts += [
                "",
                f"Claim throughput: {self.args.throughput_messages} query messages to one node "
                f"id, {self.args.throughput_workers} node worker(s); msg/s from the first push "
                "to the last reply (cost = off rate / on rate - 1).",
                "",
                render(claim_headers, claim_rows),
            ]
        parts += ["", "Every run:", "", detail_table([o for _, _, o in self.runs])]
        return "\n".join(parts)

    def teardown(self) -> None:
        if self.cluster is not None:
            progress("destroying the PostgreSQL cluster")
            self.cluster.destroy()


def summary(o: Outcome) -> str:
    if not o.ok:
        return f"{o.status}: {o.reason.strip()[:1500]}"
    if "rate" in o.extra:
        return f"{o.extra['rate']:.0f} msg/s ({o.extra.get('steady_rate', 0):.0f} steady)"
    rounds = " ".join(f"{s:.3f}" for s in o.round_seconds)
    return f"rounds {rounds}, median r2.. {o.median_round:.3f} s (harness {o.wall:.0f} s)"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:+.1f}%"


def fedavg_row(config: Config, values: dict[str, list[float]], variants: list[str]) -> list[str]:
    m_off = _median(values["off"])
    row = [label(config), secs(m_off)]
    for variant in variants[1:]:
        m = _median(values[variant])
        row += [secs(m), _pct(m / m_off - 1 if m_off and m is not None else None)]
    return row + [" ".join(secs(v) for v in values[v]) or "failed" for v in variants]


def claim_row(values: dict[str, list[float]], variants: list[str]) -> list[str]:
    m_off = _median(values["off"])
    row = [CLAIMS, DASH if m_off is None else f"{m_off:.0f}"]
    for variant in variants[1:]:
        m = _median(values[variant])
        row += [
            DASH if m is None else f"{m:.0f}",
            _pct(m_off / m - 1 if m_off and m else None),
        ]
    return row + [" ".join(f"{x:.0f}" for x in values[v]) or "failed" for v in variants]


def machine_notes(cluster: BenchCluster | None) -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    pg = cluster.server_version() if cluster is not None else "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs; PostgreSQL {pg}; commit {head or '?'}; load average {load}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="rls-cost-"))
    os.chmod(workdir, 0o711)  # the cluster may run as an unprivileged account
    began = time.monotonic()
    bench = RlsCost(args, workdir)
    notes = ""

    def body() -> None:
        nonlocal notes
        bench.setup()
        notes = machine_notes(bench.cluster)
        progress(notes)
        bench.run_all()

    code = run_guarded(body, bench.teardown, workdir, keep_logs=args.keep_logs, progress=progress)
    print(f"## Row-level security cost ({notes})\n")
    print(bench.report())
    print(f"\n(harness wall time {time.monotonic() - began:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
