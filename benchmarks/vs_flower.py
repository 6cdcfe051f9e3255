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

What it runs
------------
The systems of `--systems`: `floor`, `flpg`, `flower`, and `flpg:NAME` for each
`--variant NAME="k=v ..."` (flpg with those run-config items appended, e.g.
`--variant int8="flpg.reply-codec='int8'"`); `--flpg-run-config "k=v ..."` is
appended to every flpg run (before a variant's items). `floor` is measured twice:
through a logged chunk table ("floor s", the class of checkpoints) and an UNLOGGED
one ("floor unlogged s", the class of round-transient payloads, replies and
broadcasts no checkpoint needs); the table shows flpg's share of both. The
configurations (`harness/plan.py`) are the N x size product of `--nodes` and
`--sizes`, a scaling sweep (`--sweep n`: N = 2,4,8,16,32,64 at 16MB; `--sweep size`:
1MB,4MB,16MB,64MB,256MB at N=8; `--nodes`/`--sizes` override an axis), or
exactly the pairs of `--cases 2x1.5GB,8x128MB`. `--label TEXT` tags every row (a
table column and a JSON field), to tell invocations apart once their files are
plotted together.

`--pg-max-connections` overrides the embedded cluster's max_connections (each flpg
node holds several connections: N=64 needs more than flpg's default 300).

Every run is also written, as it finishes, to a JSON file (`--json PATH`; default
`benchmarks/results/vs_flower-<UTC time>.json`, format in `harness/jsonlog.py`), which
`benchmarks/plot_curves.py` turns into scaling curves.

Extras (`--extras`, on by default for the full matrix, off with `--quick`, a sweep
or `--cases`; they use the first flpg entry of `--systems`): 1 000 virtual nodes
served by one flpg node worker process with a 4 B model (one round;
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
    .venv/bin/python benchmarks/vs_flower.py --sweep n --systems flpg,floor,flower
    .venv/bin/python benchmarks/vs_flower.py --cases 8x128MB --systems flpg,flpg:int8,floor \\
        --variant int8="flpg.reply-codec='int8'"
    .venv/bin/python benchmarks/plot_curves.py benchmarks/results/*.json --out-dir benchmarks/

Progress goes to stderr, the tables to stdout. Everything runs in a temporary
directory (kept with `--keep-logs`): the cluster, worker logs, Flower's FLWR_HOME.
On exit (also on Ctrl-C, SIGTERM, a timeout or an error) every process it started is
stopped, anything still carrying the invocation's environment tag is killed (flpg's
ServerApp and ClientApp processes, Flower's SuperExec, ServerApp and ClientApp
processes), the cluster is destroyed and the directory removed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cluster import BenchCluster
from harness.floor import FloorSide
from harness.flower_side import FlowerSide
from harness.flpg_side import FlpgSide
from harness.jsonlog import JsonLog, default_path, machine_facts
from harness.plan import System, parse_ints, parse_systems, parse_variants, plan_configs
from harness.procs import interrupt_on_signals, run_guarded
from harness.results import Config, Outcome, format_size, parse_size
from harness.table import (
    MAIN_LEGEND,
    Results,
    detail_table,
    extras_fedavg_table,
    idle_table,
    main_table,
    throughput_table,
)


def progress(message: str) -> None:
    print(f"[vs_flower {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="flpg vs Flower 1.42 vs the raw PostgreSQL floor, on this machine."
    )
    add = parser.add_argument
    add("--systems", default="flpg,floor,flower", help="Any of flpg,floor,flower,flpg:NAME.")
    add(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="k=v ..."',
        help="flpg:NAME in --systems is flpg with these run-config items appended.",
    )
    add("--flpg-run-config", default="", help="k=v items appended to every flpg run's config.")
    add("--label", default="", help="A tag for every row (table column, JSON field).")
    add("--nodes", default=None, help="Node counts (default 2,8,32; quick 2,8; see --sweep).")
    add("--sizes", default=None, help="Model sizes (default 4B,1MB,16MB,128MB; quick 4B,1MB).")
    add(
        "--sweep",
        choices=("n", "size"),
        default=None,
        help="n: N=2..64 at 16MB; size: 1MB..256MB at N=8 (--nodes/--sizes override).",
    )
    add("--cases", default=None, help="Exactly these NxSIZE pairs: 2x1.5GB,8x128MB,...")
    add("--json", type=Path, default=None, help="Results file (default benchmarks/results/).")
    add("--rounds", type=int, default=3, help="FedAvg rounds per run.")
    add("--timeout", type=float, default=900, help="Seconds per configuration and system.")
    add("--quick", action="store_true", help="N 2,8 x 4B,1MB.")
    add(
        "--extras",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Virtual nodes, big model, throughput, idle RSS (default: on for the full matrix).",
    )
    add("--virtual-nodes", type=int, default=1000, help="Extras: virtual nodes.")
    add("--big-size", default="1.5GB", help="Extras: the big model at N=2.")
    add("--big-rounds", type=int, default=1, help="Extras: rounds of the big model.")
    add("--throughput-workers", default="1,2,4", help="Extras: node workers for throughput.")
    add("--throughput-messages", type=int, default=2000, help="Extras: messages per burst.")
    add("--pg-max-connections", type=int, default=None, help="Override flpg's setting.")
    add("--keep-logs", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.big_rounds < 1:
        parser.error("--rounds and --big-rounds must be >= 1")
    try:
        args.system_list = parse_systems(args.systems, parse_variants(args.variant))
        args.configs = plan_configs(
            rounds=args.rounds,
            nodes=args.nodes,
            sizes=args.sizes,
            sweep=args.sweep,
            cases=args.cases,
            quick=args.quick,
        )
        args.big_bytes = parse_size(args.big_size)
        args.worker_list = parse_ints(args.throughput_workers, "--throughput-workers")
    except ValueError as exc:
        parser.error(str(exc))
    if args.extras is None:
        args.extras = not (args.quick or args.sweep or args.cases)
    args.json = args.json or default_path()
    return args


def flpg_config(args: argparse.Namespace, system: System) -> str:
    """What an flpg entry appends to the run config: --flpg-run-config, its variant's."""
    return " ".join(c for c in (args.flpg_run_config.strip(), system.run_config) if c)


class Bench:
    """One invocation: the cluster, the three sides and everything measured so far."""

    def __init__(self, args: argparse.Namespace, workdir: Path, argv: Sequence[str]) -> None:
        self.args = args
        self.workdir = workdir
        self.names = {s.name for s in args.system_list}
        self.flpg_systems: list[System] = [s for s in args.system_list if s.name == "flpg"]
        self.cluster: BenchCluster | None = None
        self.flpg: FlpgSide | None = None
        self.floor: FloorSide | None = None
        self.flower: FlowerSide | None = None
        self.configs: list[Config] = []
        self.results: Results = {}
        self.outcomes: list[Outcome] = []
        self.extra_fedavg: list[Outcome] = []
        self.throughput: list[tuple[int, Outcome]] = []
        self.idle: list[Outcome] = []
        self.header = ""
        plan = {
            "sweep": args.sweep,
            "cases": args.cases,
            "systems": [s.key for s in args.system_list],
            "variants": {s.variant: s.run_config for s in args.system_list if s.variant},
            "flpg_run_config": args.flpg_run_config,
            "rounds": args.rounds,
            "timeout": args.timeout,
            "configs": [[c.nodes, c.nbytes] for c in args.configs],
        }
        self.log = JsonLog(args.json, argv, args.label, plan)

    def setup(self) -> None:
        progress(f"results go to {self.args.json}")
        self.log.write()
        if self.names & {"flpg", "floor"}:
            progress(f"starting a private PostgreSQL cluster in {self.workdir / 'pg'}")
            self.cluster = BenchCluster(self.workdir / "pg", self.args.pg_max_connections)
        if "flower" in self.names:
            self.flower = FlowerSide(self.workdir, progress)
            if self.flower.version is None:
                progress(f"Flower unavailable: {self.flower.install_error}")
        if self.cluster is not None:
            if "flpg" in self.names:
                self.flpg = FlpgSide(self.cluster, self.workdir, progress)
            if "floor" in self.names:
                self.floor = FloorSide(self.cluster)
        pg = self.cluster.server_version() if self.cluster else None
        conns = self.cluster.setting("max_connections") if self.cluster else None
        flower = (self.flower.version or "not installed") if self.flower else None
        self.log.set_versions(postgresql=pg, flower=flower, max_connections=conns)
        facts = machine_facts()
        self.header = (
            f"{facts['cpus']} CPUs, {facts['mem_gib']:.0f} GiB; PostgreSQL {pg or 'not used'} "
            f"(max_connections {conns}); "
            f"Flower {flower or 'not used'}; {self.args.rounds} rounds, median of rounds "
            f"2..{self.args.rounds}; timeout {self.args.timeout:g} s per run"
            + (f"; label {self.args.label}" if self.args.label else "")
        )

    def record(self, outcome: Outcome, key: bool = True) -> None:
        self.outcomes.append(outcome)
        if key:
            self.results[(outcome.key, outcome.config)] = outcome
        self.log.add(outcome, "matrix" if key else "extra")
        median = outcome.median_round
        progress(
            f"{outcome.key:14} {outcome.config.label:>12}: {outcome.status}"
            + (f", median round {median:.3f} s" if median is not None else "")
            + (f", start-up {outcome.startup:.2f} s" if outcome.startup is not None else "")
            + f" (harness {outcome.wall:.0f} s)"
            + ("" if outcome.ok else f"\n    {outcome.reason.strip()[:2000]}")
        )

    def run_system(self, system: System, config: Config, key: bool = True) -> None:
        """Run one entry of --systems on `config` (the floor: both tables) and record it."""
        timeout = self.args.timeout
        progress(f"{system.key:14} {config.label:>12}: running")
        if system.name == "floor":
            assert self.floor is not None
            self.record(self.floor.run(config, timeout), key)
            self.record(self.floor.run(config, timeout, unlogged=True), key)
        elif system.name == "flpg":
            assert self.flpg is not None
            outcome = self.flpg.fedavg(
                config,
                timeout,
                run_config=flpg_config(self.args, system),
                variant=system.variant,
            )
            self.record(outcome, key)
        else:
            assert self.flower is not None
            self.record(self.flower.run(config, timeout), key)

    def ordered(self) -> list[System]:
        """The floor first, then the flpg entries as given, then Flower."""
        rank = {"floor": 0, "flpg": 1, "flower": 2}
        return sorted(self.args.system_list, key=lambda s: rank[s.name])

    def matrix(self) -> None:
        for config in self.args.configs:
            self.configs.append(config)
            for system in self.ordered():
                self.run_system(system, config)

    def extras(self) -> None:
        first_flpg = self.flpg_systems[0] if self.flpg_systems else None
        if self.flpg is not None:
            self.idle.append(self.flpg.idle_node(self.args.timeout))
            progress(f"flpg idle node worker: {self.idle[-1].extra} {self.idle[-1].reason}")
        if self.flower is not None:
            self.idle.append(self.flower.idle_node(self.args.timeout))
            progress(f"flower idle SuperNode: {self.idle[-1].extra} {self.idle[-1].reason}")
        virtual = Config(self.args.virtual_nodes, 4, 1)
        if self.floor is not None:
            progress(f"floor  {virtual.label:>12}: running (virtual nodes)")
            self._extra(self.floor.run(virtual, self.args.timeout))
        if self.flpg is not None and first_flpg is not None:
            progress(f"{first_flpg.key:6} {virtual.label:>12}: running (virtual nodes)")
            outcome = self.flpg.fedavg(
                virtual,
                self.args.timeout,
                virtual=True,
                run_config=flpg_config(self.args, first_flpg),
                variant=first_flpg.variant,
            )
            self._extra(outcome)
        big = Config(2, self.args.big_bytes, self.args.big_rounds)
        for system in self.ordered():
            if system.name != "flpg" or system == first_flpg:
                before = len(self.outcomes)
                self.run_system(system, big, key=False)
                self.extra_fedavg += self.outcomes[before:]
        if self.flpg is not None:
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

    def _extra(self, outcome: Outcome) -> None:
        self.record(outcome, key=False)
        self.extra_fedavg.append(outcome)

    def report(self) -> str:
        parts = [
            f"## flpg vs Flower 1.42 vs the PostgreSQL floor ({self.header})",
            "",
            MAIN_LEGEND,
            "",
            main_table(
                self.configs,
                self.results,
                [s.key for s in self.flpg_systems],
                self.args.label,
            ),
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
        self.log.finish()


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (as a
    # background job of a non-interactive shell is), so cleanup always runs.
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="vs-flower-"))
    # The cluster may run as an unprivileged account (when we are root): let it
    # traverse the directory (still unreadable to others).
    workdir.chmod(0o711)
    began = time.monotonic()
    bench = Bench(args, workdir, given)

    def body() -> None:
        bench.setup()
        bench.matrix()
        if args.extras:
            bench.extras()

    code = run_guarded(body, bench.teardown, workdir, keep_logs=args.keep_logs, progress=progress)
    print(bench.report())
    print(f"\n(harness wall time {time.monotonic() - began:.0f} s; results in {args.json})")
    return code


if __name__ == "__main__":
    sys.exit(main())
