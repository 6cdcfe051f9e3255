"""Benchmark: flpg against Flower 1.42 (and the raw PostgreSQL floor), side by side.

What it measures
----------------
The same federated job runs on three systems, one after another, in one invocation
on this machine: FedAvg weighted by `num-examples`, no evaluation, over a float32
vector of the given size; node `partition-id` p adds p + 1 to every entry it
receives (both ServerApps check the final model, so a run that "finishes" also
computed the right thing). For every N in `--nodes` and size in `--sizes`
(binary units: 1MB = 2**20 bytes), `--rounds` rounds:

- flpg (`apps/bench_flpg`, see `harness/flpg_side.py`): `flpg link`, `flpg exec` and
  N `flpg node` processes on a fresh database of a private PostgreSQL cluster;
  times from the database's own timestamps;
- Flower 1.42 Deployment Engine (`apps/bench_flower`, `harness/flower_side.py`):
  `flower-superlink` and N `flower-supernode` processes, Flower installed by the
  harness into `benchmarks/.flower-venv`; times from marks its ServerApp writes;
- the floor (`harness/floor.py`): the same bytes through PostgreSQL with plain
  psycopg in one process (payload written once, read N times, N replies written
  and read once).

Per configuration and system: the median round time over rounds 2..R (round 1
includes starting ClientApp processes and is shown in the detail table), start-up
(from launching the submit command to round 1's push), and the peak memory of the
server-side processes (flpg: link + exec + ServerApp; Flower: SuperLink + its
SuperExec + ServerApp), of one node (flpg: node worker + its ClientApp process;
Flower: SuperNode + its SuperExec + its ClientApp processes) and of PostgreSQL (PSS,
flpg only; see `harness/rss.py`). flpg's speed-up is Flower's median round time over
flpg's; "% of floor" is the floor's time over flpg's. A configuration that fails or
runs past `--timeout` is printed as such, with the reason under the table.

Extras (`--extras`, on by default for the full matrix, off with `--quick`): 1 000
virtual nodes served by one flpg node worker process with a 4 B model (one round;
`flpg node --virtual 1000`, or `harness/virtual_nodes.py` with an flpg that lacks
that option), a 1.5 GB model at N=2 (flpg's chunking past PostgreSQL's 1 GB
value limit; floor and Flower too), tiny-message throughput (one node id served by
1, 2, 4 `flpg node` workers answering a burst of query messages; rate from message
timestamps) and the idle RSS of one node worker (flpg, and a Flower SuperNode).

How to run it
-------------
From the repository root, with the project's venv::

    .venv/bin/python benchmarks/vs_flower.py --quick
    .venv/bin/python benchmarks/vs_flower.py                   # full matrix + extras
    .venv/bin/python benchmarks/vs_flower.py --systems flpg,floor --nodes 2,8 \\
        --sizes 4B,16MB --rounds 3 --timeout 600 --no-extras

Progress goes to stderr, the tables to stdout. Everything runs in a temporary
directory (kept with `--keep-logs`): the cluster, worker logs, Flower's FLWR_HOME.
On exit (also on Ctrl-C, SIGTERM, a timeout or an error) every process it started is
stopped, anything still carrying the invocation's environment tag is killed (flpg's
ServerApp and ClientApp processes, Flower's SuperExec, ServerApp and ClientApp
processes), the cluster is destroyed and the directory removed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cluster import BenchCluster
from harness.floor import FloorSide
from harness.flower_side import FlowerSide
from harness.flpg_side import FlpgSide
from harness.procs import interrupt_on_signals, run_guarded
from harness.results import Config, Outcome, format_size, parse_size
from harness.table import (
    detail_table,
    extras_fedavg_table,
    idle_table,
    main_table,
    throughput_table,
)

SYSTEMS = ("floor", "flpg", "flower")
QUICK_NODES = "2,8"
QUICK_SIZES = "4B,1MB"


def progress(message: str) -> None:
    print(f"[vs_flower {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ints(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{what} must be comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        parser.error(f"{what} must be integers >= 1")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="flpg vs Flower 1.42 vs the raw PostgreSQL floor, on this machine."
    )
    parser.add_argument("--systems", default="flpg,floor,flower", help="Any of flpg,floor,flower.")
    parser.add_argument("--nodes", default=None, help="Node counts (default 2,8,32; quick 2,8).")
    parser.add_argument(
        "--sizes", default=None, help="Model sizes (default 4B,1MB,16MB,128MB; quick 4B,1MB)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds per run.")
    parser.add_argument(
        "--timeout", type=float, default=900, help="Seconds per configuration and system."
    )
    parser.add_argument("--quick", action="store_true", help=f"N {QUICK_NODES} x {QUICK_SIZES}.")
    parser.add_argument(
        "--extras",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Virtual nodes, big model, throughput, idle RSS (default: on unless --quick).",
    )
    parser.add_argument("--virtual-nodes", type=int, default=1000, help="Extras: virtual nodes.")
    parser.add_argument("--big-size", default="1.5GB", help="Extras: the big model at N=2.")
    parser.add_argument(
        "--big-rounds", type=int, default=1, help="Extras: rounds of the big model."
    )
    parser.add_argument(
        "--throughput-workers", default="1,2,4", help="Extras: node workers for throughput."
    )
    parser.add_argument(
        "--throughput-messages", type=int, default=2000, help="Extras: messages per burst."
    )
    parser.add_argument("--keep-logs", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args(argv)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.system_list if s not in SYSTEMS]
    if unknown or not args.system_list:
        parser.error(f"--systems takes any of {','.join(SYSTEMS)}; got {args.systems!r}")
    args.node_list = _ints(
        args.nodes or (QUICK_NODES if args.quick else "2,8,32"), "--nodes", parser
    )
    sizes = args.sizes or (QUICK_SIZES if args.quick else "4B,1MB,16MB,128MB")
    try:
        args.size_list = [parse_size(s) for s in sizes.split(",") if s.strip()]
        args.big_bytes = parse_size(args.big_size)
    except ValueError as exc:
        parser.error(str(exc))
    args.worker_list = _ints(args.throughput_workers, "--throughput-workers", parser)
    if args.rounds < 1 or args.big_rounds < 1:
        parser.error("--rounds and --big-rounds must be >= 1")
    if args.extras is None:
        args.extras = not args.quick
    return args


class Bench:
    """One invocation: the cluster, the three sides and everything measured so far."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.cluster: BenchCluster | None = None
        self.flpg: FlpgSide | None = None
        self.floor: FloorSide | None = None
        self.flower: FlowerSide | None = None
        self.configs: list[Config] = []
        self.results: dict[tuple[str, Config], Outcome] = {}
        self.outcomes: list[Outcome] = []
        self.extra_fedavg: list[Outcome] = []
        self.throughput: list[tuple[int, Outcome]] = []
        self.idle: list[Outcome] = []
        self.header = ""

    def setup(self) -> None:
        systems = self.args.system_list
        if "flpg" in systems or "floor" in systems:
            progress(f"starting a private PostgreSQL cluster in {self.workdir / 'pg'}")
            self.cluster = BenchCluster(self.workdir / "pg")
        if "flower" in systems:
            self.flower = FlowerSide(self.workdir, progress)
            if self.flower.version is None:
                progress(f"Flower unavailable: {self.flower.install_error}")
        if self.cluster is not None:
            if "flpg" in systems:
                self.flpg = FlpgSide(self.cluster, self.workdir, progress)
            if "floor" in systems:
                self.floor = FloorSide(self.cluster)
        pg = self.cluster.server_version() if self.cluster else "not used"
        flower = (self.flower.version or "not installed") if self.flower else "not used"
        self.header = (
            f"{os.cpu_count()} CPUs, {_mem_gib():.0f} GiB; PostgreSQL {pg}; Flower {flower}; "
            f"{self.args.rounds} rounds, median of rounds 2..{self.args.rounds}; "
            f"timeout {self.args.timeout:g} s per run"
        )

    def record(self, outcome: Outcome, key: bool = True) -> None:
        self.outcomes.append(outcome)
        if key:
            self.results[(outcome.system, outcome.config)] = outcome
        median = outcome.median_round
        progress(
            f"{outcome.system:6} {outcome.config.label:>12}: {outcome.status}"
            + (f", median round {median:.3f} s" if median is not None else "")
            + (f", start-up {outcome.startup:.2f} s" if outcome.startup is not None else "")
            + f" (harness {outcome.wall:.0f} s)"
            + ("" if outcome.ok else f"\n    {outcome.reason.strip()[:2000]}")
        )

    def run_one(self, system: str, config: Config, **kwargs: object) -> Outcome:
        timeout = self.args.timeout
        if system == "floor":
            assert self.floor is not None
            return self.floor.run(config, timeout)
        if system == "flpg":
            assert self.flpg is not None
            return self.flpg.fedavg(config, timeout, **kwargs)  # type: ignore[arg-type]
        assert self.flower is not None
        return self.flower.run(config, timeout)

    def matrix(self) -> None:
        for nbytes in self.args.size_list:
            for nodes in self.args.node_list:
                config = Config(nodes, nbytes, self.args.rounds)
                self.configs.append(config)
                for system in SYSTEMS:
                    if system in self.args.system_list:
                        progress(f"{system:6} {config.label:>12}: running")
                        self.record(self.run_one(system, config))

    def extras(self) -> None:
        systems = self.args.system_list
        if "flpg" in systems:
            assert self.flpg is not None
            self.idle.append(self.flpg.idle_node(self.args.timeout))
            progress(f"flpg idle node worker: {self.idle[-1].extra} {self.idle[-1].reason}")
        if self.flower is not None:
            self.idle.append(self.flower.idle_node(self.args.timeout))
            progress(f"flower idle SuperNode: {self.idle[-1].extra} {self.idle[-1].reason}")
        virtual = Config(self.args.virtual_nodes, 4, 1)
        for system in ("floor", "flpg"):
            if system in systems:
                progress(f"{system:6} {virtual.label:>12}: running (virtual nodes)")
                outcome = self.run_one(system, virtual, virtual=True)
                self.record(outcome, key=False)
                self.extra_fedavg.append(outcome)
        big = Config(2, self.args.big_bytes, self.args.big_rounds)
        for system in SYSTEMS:
            if system in systems:
                progress(f"{system:6} {big.label:>12}: running (big model)")
                outcome = self.run_one(system, big)
                self.record(outcome, key=False)
                self.extra_fedavg.append(outcome)
        if "flpg" in systems:
            assert self.flpg is not None
            for workers in self.args.worker_list:
                progress(f"flpg throughput, {workers} node worker(s): running")
                outcome = self.flpg.throughput(
                    workers, self.args.throughput_messages, self.args.timeout
                )
                self.throughput.append((workers, outcome))
                progress(
                    f"flpg throughput, {workers} worker(s): {outcome.status} "
                    f"{ {k: round(v, 1) for k, v in outcome.extra.items()} } {outcome.reason[:500]}"
                )

    def report(self) -> str:
        parts = [
            f"## flpg vs Flower 1.42 vs the PostgreSQL floor ({self.header})",
            "",
            "Round times: median over rounds 2..R, seconds. MB = MiB of peak memory "
            "(RSS of process trees; flpg server = link + exec + ServerApp, flpg ServerApp = "
            "the run's ServerApp process alone; PG = PostgreSQL PSS). The detail table's "
            "'others CPU' is "
            "the share of the machine's CPU that processes outside the benchmark used during "
            "a run: well above 0 % means other work competed and the times are pessimistic.",
            "",
            main_table(self.configs, self.results),
        ]
        if self.extra_fedavg:
            parts += [
                "",
                f"### Extras: {self.args.virtual_nodes} virtual nodes (one flpg worker process) "
                f"and a {format_size(self.args.big_bytes)} model at N=2",
                "",
                extras_fedavg_table(self.extra_fedavg),
            ]
        if self.throughput:
            parts += [
                "",
                "### Extras: tiny-message throughput (one node id; query messages, no arrays)",
                "",
                throughput_table(self.throughput),
            ]
        if self.idle:
            parts += ["", "### Extras: idle RSS of one node worker", "", idle_table(self.idle)]
        if self.outcomes:
            parts += ["", "### Every run", "", detail_table(self.outcomes)]
        return "\n".join(parts)

    def teardown(self) -> None:
        if self.cluster is not None:
            progress("destroying the PostgreSQL cluster")
            self.cluster.destroy()


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (as a
    # background job of a non-interactive shell is), so cleanup always runs.
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="vs-flower-"))
    # The cluster may run as an unprivileged account (when we are root): let it
    # traverse the directory (still unreadable to others).
    os.chmod(workdir, 0o711)
    began = time.monotonic()
    bench = Bench(args, workdir)

    def body() -> None:
        bench.setup()
        bench.matrix()
        if args.extras:
            bench.extras()

    code = run_guarded(body, bench.teardown, workdir, keep_logs=args.keep_logs, progress=progress)
    print(bench.report())
    print(f"\n(harness wall time {time.monotonic() - began:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
