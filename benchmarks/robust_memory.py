"""Benchmark: ServerApp-side peak memory and time of the chunk-wise robust strategies.

What it measures
----------------
One private PostgreSQL cluster (`harness/cluster.py`), one migrated database, one
run with N selected nodes. The benchmark sends one train instruction to each node
(a tiny payload: the instructions do not matter here) and answers each as a node
would (`flpg.node.replies.write_replies`, 1 MiB chunks) with a float32 model of
SIZE split into three arrays: node i's values are normal around 0.01 * i, node 0's
around 100 (an outlier Krum must leave out).

Then, for each strategy, a fresh Python process plays the ServerApp: it opens a
`Grid` on the run, receives the N replies (arrays stored, not read) and calls the
strategy's `aggregate_train` on them, as `Strategy.start` does in a round. It
reports its own peak RSS (`ru_maxrss`: the kernel's exact high-water mark of that
process), its RSS after imports and grid set-up, and the time `aggregate_train`
took (reading every reply from the database included). FedAvg is the reference:
one streamed pass. FedMedian is one chunk-wise pass; Krum two (distances, then the
chosen reply). The target is peak RSS <= 4 x the model size.

How to run it
-------------
From the repository root, with the project's venv::

    .venv/bin/python benchmarks/robust_memory.py --quick      # 8 x 16 MB
    .venv/bin/python benchmarks/robust_memory.py              # 32 x 128 MB (~4 GB)

`--nodes`, `--size-mb` and `--strategies` override the case; `--json FILE` also
writes the results. Everything runs in a temporary directory, removed on exit with
the cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flpg import bus
from flpg.app.message import Message
from flpg.app.records import ArrayRecord, MetricRecord, RecordDict
from flpg.node.replies import Answer, write_replies
from flpg.serverapp.grid import Grid
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import connect
from flpg.store.migrate import upgrade

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness.cluster import BenchCluster  # noqa: E402

BUNDLE = b"PK\x05\x06" + bytes(18)  # an empty zip: the run is never launched by an exec
STRATEGIES = "FedAvg,FedMedian,Krum"


def progress(message: str) -> None:
    print(f"[robust_memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def node_model(index: int, size: int) -> dict[str, np.ndarray[Any, Any]]:
    """Node `index`'s float32 model of `size` bytes in three arrays."""
    rng = np.random.default_rng(index)
    count = size // 4
    centre = 100.0 if index == 0 else 0.01 * index
    first, second = count // 2, count // 2 - count // 128
    out = {}
    for name, n in (("dense", first), ("conv", second), ("head", count - first - second)):
        values = rng.standard_normal(n, dtype=np.float32)
        values += np.float32(centre)
        out[name] = values
    return out


def prepare(url: str, nodes: int, size: int) -> tuple[int, list[str]]:
    """Migrate, register the nodes, create and start a run, send and answer one
    instruction per node; the run id and the instruction ids."""
    upgrade(url)
    with connect(url) as conn:
        node_ids = [
            store_nodes.register(conn, name=f"node-{i}", node_config={}, labels={}).id
            for i in range(nodes)
        ]
        run_id = store_runs.create(
            conn,
            app_hash=hashlib.sha256(BUNDLE).hexdigest(),
            app_name="robust-memory",
            bundle=BUNDLE,
            run_config={},
            node_ids=node_ids,
        )
        claim = store_runs.claim_next(conn, "bench-exec")
        assert claim is not None and claim.run_id == run_id
        store_runs.mark_running(conn, run_id, "bench-exec", 1)
    grid = Grid(url, run_id)
    try:
        tiny = ArrayRecord({"x": np.zeros(1, np.float32)})
        ids = grid.push_messages(
            grid.create_message(RecordDict({"arrays": tiny}), "train", node, group_id="1")
            for node in node_ids
        )
    finally:
        grid.close()
    with connect(url) as conn:
        for _ in node_ids:
            (row,) = store_messages.claim(
                conn, worker="bench", node_ids=node_ids, lease=600, limit=1
            )
            (instruction,) = bus.load(conn, [row])
            index = node_ids.index(row.dst_node_id or -1)
            content = RecordDict(
                {
                    "arrays": ArrayRecord(node_model(index, size)),
                    "metrics": MetricRecord({"num-examples": 1 + index}),
                }
            )
            answer = Answer(row, reply=Message(content, reply_to=instruction))
            write_replies(conn, "bench", run_id, [answer])
            progress(f"node {index + 1}/{nodes} replied")
    return run_id, ids


def aggregate(url: str, run_id: int, ids: list[str], strategy_name: str) -> dict[str, Any]:
    """The ServerApp side (run in its own process): aggregate the replies once."""
    import flpg.serverapp.strategy.fedavg as fedavg
    import flpg.serverapp.strategy.fedmedian as fedmedian
    import flpg.serverapp.strategy.krum as krum

    classes = {
        "FedAvg": fedavg.FedAvg,
        "FedMedian": fedmedian.FedMedian,
        "Krum": krum.Krum,
    }
    strategy = classes[strategy_name](min_available_nodes=1)
    grid = Grid(url, run_id)
    baseline = current_rss()
    started = time.monotonic()
    arrays, _ = strategy.aggregate_train(1, grid.receive(ids, timeout=120))
    took = time.monotonic() - started
    assert arrays is not None, "nothing was aggregated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    head = arrays["head"].numpy()
    grid.close()
    return {
        "strategy": strategy_name,
        "seconds": took,
        "peak_rss": peak,
        "baseline_rss": baseline,
        "model_bytes": sum(a.nbytes for a in arrays.values()),
        "outlier_left_out": bool(np.abs(head).max() < 50),
    }


def current_rss() -> int:
    """This process's resident memory now, in bytes (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(url: str, run_id: int, ids: list[str], strategy: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--aggregate", strategy, "--url", url]
    args += ["--run-id", str(run_id), "--ids", ",".join(map(str, ids))]
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{strategy} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(results: list[dict[str, Any]], nodes: int, size: int) -> str:
    mib = 1 << 20
    lines = [
        f"N = {nodes} replies x {size / mib:.0f} MiB float32 model",
        "",
        "| strategy | time per round | peak RSS | peak / model | RSS before aggregating |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['strategy']} | {r['seconds']:.1f} s | {r['peak_rss'] / mib:.0f} MiB | "
            f"{r['peak_rss'] / size:.2f} | {r['baseline_rss'] / mib:.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 nodes x 16 MB")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--size-mb", type=int)
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--aggregate", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aggregate:
        ids = args.ids.split(",")
        print(json.dumps(aggregate(args.url, args.run_id, ids, args.aggregate)))
        return
    nodes = args.nodes or (8 if args.quick else 32)
    size = (args.size_mb or (16 if args.quick else 128)) << 20
    with tempfile.TemporaryDirectory(prefix="flpg-robust-") as tmp:
        os.chmod(tmp, 0o711)  # the cluster may run as an unprivileged account
        cluster = BenchCluster(Path(tmp) / "pg")
        try:
            url = cluster.create_database("robust")
            progress(f"writing {nodes} replies of {size >> 20} MiB")
            run_id, ids = prepare(url, nodes, size)
            results = []
            for strategy in args.strategies.split(","):
                progress(f"aggregating with {strategy}")
                results.append(run_child(url, run_id, ids, strategy))
                progress(json.dumps(results[-1]))
        finally:
            cluster.destroy()
    print(table(results, nodes, size))
    if args.json:
        args.json.write_text(json.dumps({"nodes": nodes, "size": size, "results": results}))


if __name__ == "__main__":
    main()
