"""Benchmark: what compressed replies (run config `flpg.reply-codec`) cost in accuracy
and save in bytes on the digits example.

A local federation (1 `flpg link`, 1 `flpg exec`, `--nodes` N `flpg node` workers with
`partition-id` 0..N-1) runs `examples/digits` unchanged: FedAvg over every node
(`min-nodes` = N), centralised evaluation on the 360 held-out test images after each
round (one image = 0.28 points). Each codec of `--codecs` (none: the key absent) runs
`--repeats` times with the same config and seed. From the database, per run:

- accuracy: `accuracy` of the last round's `server_evaluate` round_metrics;
- reply bytes logical: `sum(arrays.nbytes)` of the replies' arrays (checked equal to
  `run_accounting.bytes_received`, which counts the same);
- reply bytes stored: `sum(octet_length(data))` of their chunks in `array_chunks` and
  `array_chunks_transient`, what crossed the bus. The workers get
  FLPG_PAYLOAD_GRACE=86400 so the link keeps the chunks until counted;
- round s: between consecutive `server_evaluate` records (round 0 = the initial model);
  the table shows the median over all rounds of a codec's runs.

Every reply array must carry the codec asked for (none: NULL), and none may have been
collected; else the benchmark fails. PASS/MISS per codec: |Δ accuracy vs none| <=
`--tolerance` points (0.5: the issue's bound for fp16 and int8). An unmeasured 1-round
run first fills the nodes' app cache. From the repository root::

    .venv/bin/python benchmarks/compression_accuracy.py
    .venv/bin/python benchmarks/compression_accuracy.py --codecs none,int8 --rounds 20 \\
        --nodes 5 --repeats 3 --run-config "partitioning='dirichlet' alpha=0.3"

It starts a throwaway PostgreSQL cluster (or uses `--db URL`, an empty database) and
stops all it started on exit (`concurrent_runs.py`'s process handling). Results also go
to `benchmarks/results/compression_accuracy-YYYYmmddTHHMMSSZ.json` (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import concurrent_runs as cr

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
RESULTS_DIR = ROOT / "benchmarks" / "results"
_EXAMPLE = tomllib.loads((DIGITS / "pyproject.toml").read_text())["tool"]["flpg"]["app"]
ROUNDS = int(_EXAMPLE["config"]["num-server-rounds"])
CODECS = ("none", "fp16", "bf16", "int8")
REQUIRED = ("fp16", "int8")
"""The codecs the issue bounds (`--tolerance` points of the uncompressed accuracy)."""
PLAN = ("nodes", "rounds", "repeats", "seed", "run_config", "tolerance")
GRACE = "86400"
"""FLPG_PAYLOAD_GRACE of the workers: reply chunks stay until the benchmark counts them."""


@dataclass(frozen=True)
class RunResult:
    codec: str
    run_id: int
    accuracy: float
    logical_bytes: int
    stored_bytes: int
    reply_arrays: int
    round_seconds: list[float]
    wall_seconds: float


def start_federation(fed: cr.Federation, nodes: int) -> None:
    fed.env["FLPG_PAYLOAD_GRACE"] = GRACE
    fed.start("link", "link")
    fed.start("exec", "exec", "--max-runs", "1")
    for i in range(nodes):
        config = f"partition-id={i} num-partitions={nodes}"
        fed.start(f"node{i}", "node", "--name", f"node{i}", "--node-config", config)


def wait_online(fed: cr.Federation, nodes: int, timeout: float = 60) -> None:
    names = [f"node{i}" for i in range(nodes)]
    deadline = time.monotonic() + timeout
    sql = "SELECT count(*) FROM nodes WHERE name = ANY(%s) AND status = 'online'"
    while (online := int(cr.query(fed.url, sql, [names])[0][0])) < nodes:
        fed.check_alive()
        if time.monotonic() > deadline:
            raise cr.BenchmarkError(f"{online} of {nodes} nodes online\n{fed.log_tails()}")
        time.sleep(0.2)


def submit(fed: cr.Federation, app: Path, nodes: int, run_config: str) -> int:
    names = ",".join(f"node{i}" for i in range(nodes))
    out = fed.cli("run", str(app), "--run-config", run_config, "--nodes", names, "--format", "json")
    return int(json.loads(out)["run_id"])


REPLY_BYTES = """
SELECT count(*), coalesce(sum(a.nbytes), 0)::bigint, coalesce(sum(s.stored), 0)::bigint,
       count(*) FILTER (WHERE a.collected_at IS NOT NULL),
       count(*) FILTER (WHERE a.codec IS DISTINCT FROM %s),
       (SELECT bytes_received FROM run_accounting WHERE run_id = %s)
FROM (SELECT DISTINCT ma.array_id FROM message_arrays ma
      JOIN messages m ON m.id = ma.message_id
      WHERE m.run_id = %s AND m.reply_to IS NOT NULL) r
JOIN arrays a ON a.id = r.array_id
CROSS JOIN LATERAL (
    SELECT sum(octet_length(c.data)) AS stored
    FROM (SELECT data FROM array_chunks WHERE array_id = a.id
          UNION ALL
          SELECT data FROM array_chunks_transient WHERE array_id = a.id) c
) s
"""


def reply_bytes(url: str, run_id: int, codec: str) -> tuple[int, int, int]:
    """(arrays, logical bytes, stored bytes) of the run's replies; BenchmarkError if a
    reply array was collected, carries another codec, or run_accounting disagrees."""
    stored_codec = None if codec == "none" else codec
    row = cr.query(url, REPLY_BYTES, [stored_codec, run_id, run_id])[0]
    count, logical, stored, collected, other_codec, accounted = (int(v or 0) for v in row)
    if count == 0:
        raise cr.BenchmarkError(f"run {run_id}: its replies carry no arrays")
    if collected:
        raise cr.BenchmarkError(f"run {run_id}: {collected} reply arrays collected before counting")
    if other_codec:
        raise cr.BenchmarkError(f"run {run_id}: {other_codec} of {count} reply arrays not {codec}")
    if accounted != logical:
        raise cr.BenchmarkError(f"run {run_id}: run_accounting {accounted} B != arrays {logical} B")
    return count, logical, stored


def evaluations(url: str, run_id: int, rounds: int) -> tuple[float, list[float]]:
    """The final centralised accuracy and the seconds of each round (between
    consecutive server evaluations, round 0 included)."""
    rows = cr.query(
        url,
        "SELECT round, recorded_at, (metrics->>'accuracy')::float8 FROM round_metrics "
        "WHERE run_id = %s AND phase = 'server_evaluate' ORDER BY round",
        [run_id],
    )
    if [r[0] for r in rows] != list(range(rounds + 1)):
        raise cr.BenchmarkError(
            f"run {run_id}: server evaluations of rounds {[r[0] for r in rows]}"
        )
    seconds = [(b[1] - a[1]).total_seconds() for a, b in pairwise(rows)]
    return float(rows[-1][2]), seconds


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[RunResult], str]:
    with cr.database(args.db, workdir) as url:
        fed = cr.Federation(url, workdir)
        app = workdir / "digits"
        shutil.copytree(DIGITS, app, ignore=shutil.ignore_patterns("__pycache__"))
        try:
            fed.cli("db", "upgrade", "--db", url)
            pg_version = str(cr.query(url, "SHOW server_version")[0][0])
            start_federation(fed, args.nodes)
            wait_online(fed, args.nodes)
            cr.progress(f"federation up: {args.nodes} nodes; warm-up run (not measured)")
            cr.wait_runs(fed, [submit(fed, app, args.nodes, "num-server-rounds=1")], args.timeout)
            common = f"num-server-rounds={args.rounds} min-nodes={args.nodes} seed={args.seed}"
            common += f" {args.run_config}" if args.run_config.strip() else ""
            results: list[RunResult] = []
            for _ in range(args.repeats):
                for codec in args.codec_list:
                    extra = "" if codec == "none" else f" flpg.reply-codec='{codec}'"
                    began = time.monotonic()
                    run_id = submit(fed, app, args.nodes, common + extra)
                    cr.wait_runs(fed, [run_id], args.timeout)
                    wall = time.monotonic() - began
                    accuracy, seconds = evaluations(url, run_id, args.rounds)
                    count, logical, stored = reply_bytes(url, run_id, codec)
                    results.append(
                        RunResult(codec, run_id, accuracy, logical, stored, count, seconds, wall)
                    )
                    cr.progress(
                        f"{codec}: run {run_id} in {wall:.1f} s, accuracy {accuracy:.4f}, "
                        f"reply bytes {stored} stored / {logical} logical"
                    )
            return results, pg_version
        finally:
            with cr.uninterruptible():
                killed = fed.stop_all()
                if killed:
                    cr.progress("had to kill: " + "; ".join(killed))


@dataclass(frozen=True)
class CodecRow:
    codec: str
    run_ids: list[int]
    accuracy: float
    """Mean over the codec's runs, as are the bytes."""
    delta_points: float | None
    """100 x (accuracy - accuracy of none); None without a none run."""
    logical_bytes: float
    stored_bytes: float
    median_round_s: float
    verdict: str
    """PASS or MISS (|delta| <= tolerance), "-" for none or without a none run."""

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.logical_bytes


def summarise(results: list[RunResult], codecs: list[str], tolerance: float) -> list[CodecRow]:
    """One row per codec: means over its runs, the change against none, the verdict."""
    base = [r.accuracy for r in results if r.codec == "none"]
    rows: list[CodecRow] = []
    for codec in codecs:
        runs = [r for r in results if r.codec == codec]
        accuracy = statistics.fmean(r.accuracy for r in runs)
        delta = 100 * (accuracy - statistics.fmean(base)) if base else None
        verdict = "-"
        if codec != "none" and delta is not None:
            verdict = "PASS" if abs(delta) <= tolerance + 1e-9 else "MISS"
        logical = statistics.fmean(r.logical_bytes for r in runs)
        stored = statistics.fmean(r.stored_bytes for r in runs)
        rounds = statistics.median(s for r in runs for s in r.round_seconds)
        ids = [r.run_id for r in runs]
        rows.append(CodecRow(codec, ids, accuracy, delta, logical, stored, rounds, verdict))
    return rows


HEADER = (
    "| codec | accuracy | Δ vs none (points) | reply bytes stored | reply bytes logical "
    "| stored / logical | round s (median) | within tolerance |\n|---|" + "---:|" * 6 + "---|"
)


def table(rows: list[CodecRow]) -> str:
    lines = [HEADER]
    for r in rows:
        delta = "-" if r.codec == "none" or r.delta_points is None else f"{r.delta_points:+.2f}"
        lines.append(
            f"| {r.codec} | {r.accuracy:.4f} | {delta} | {r.stored_bytes:,.0f} | "
            f"{r.logical_bytes:,.0f} | {r.ratio:.3f} | {r.median_round_s:.2f} | {r.verdict} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Accuracy and bytes of compressed replies.")
    parser.add_argument("--codecs", default=",".join(CODECS), help="Comma-separated.")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="The example's by default.")
    parser.add_argument("--nodes", type=int, default=4, help="Node workers (min-nodes too).")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each codec.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-config", default="", help="More, e.g. \"partitioning='dirichlet'\".")
    parser.add_argument("--tolerance", type=float, default=0.5, help="Accuracy points.")
    parser.add_argument("--db", metavar="URL", help="Use this (empty) database, no own cluster.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait for a run.")
    parser.add_argument("--json", type=Path, help="Results file (default: under results/).")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the worker logs.")
    args = parser.parse_args(argv)
    args.codec_list = [c.strip().lower() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(
        c for c in set(args.codec_list) - set(CODECS) if not re.fullmatch(r"topk:[0-9.e-]+", c)
    )
    if unknown or not args.codec_list or len(set(args.codec_list)) != len(args.codec_list):
        parser.error(
            f"--codecs: distinct values of {', '.join(CODECS)} or topk:F, got {args.codecs!r}"
        )
    if min(args.rounds, args.repeats) < 1 or args.nodes < 2 or args.tolerance < 0:
        parser.error("--rounds and --repeats must be >= 1, --nodes >= 2, --tolerance >= 0")
    return args


def machine_facts() -> dict[str, object]:
    """CPUs (count and model), memory, kernel, Python and the checkout's commit."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(pages / (1 << 30), 1),
        "kernel": platform.platform(),
        "python": platform.python_version(),
        "flpg_commit": commit or "?",
    }


def report(args: argparse.Namespace, rows: list[CodecRow], facts: dict[str, object]) -> str:
    """The printed report: command, machine, date, the table and the verdicts."""
    lines = [
        "command: " + shlex.join([sys.executable, *sys.argv]),
        f"machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['mem_gib']} GiB, "
        f"PostgreSQL {facts['postgresql']}, flpg {facts['flpg_commit']}; {facts['date']}",
        f"digits example, {args.nodes} nodes, {args.rounds} rounds, seed {args.seed}, "
        f"run config {args.run_config.strip() or '(defaults)'}, "
        f"{args.repeats} run(s) per codec; {facts['wall_seconds']:.0f} s in all",
        "",
        table(rows),
        "",
    ]
    for r in rows:
        if r.verdict != "-":
            bound = "the issue's bound" if r.codec in REQUIRED else "not bound by the issue"
            lines.append(
                f"{r.verdict} {r.codec}: {r.delta_points:+.2f} points vs none "
                f"(tolerance {args.tolerance:g}; {bound})"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, cr._raise_interrupted)
    started = datetime.now(UTC)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="flpg-codec-"))
    os.chmod(workdir, 0o711)  # the cluster may run as another account (when we are root)
    try:
        results, pg_version = measure(args, workdir)
    except cr.BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, cr.Interrupted):
        print("benchmark interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            cr.progress(f"logs kept in {workdir / 'logs'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = summarise(results, args.codec_list, args.tolerance)
    facts: dict[str, object] = {
        **machine_facts(),
        "postgresql": pg_version,
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": time.monotonic() - began,
    }
    print(report(args, rows, facts))
    path = args.json or RESULTS_DIR / f"compression_accuracy-{started:%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "argv": sys.argv,
        "facts": facts,
        "plan": {k: getattr(args, k) for k in PLAN},
        "codecs": [{**asdict(r), "ratio": r.ratio} for r in rows],
        "runs": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    cr.progress(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
