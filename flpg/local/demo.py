"""`flpg demo`: a local federation, the flagship example, live progress, a summary.

Uses the federation that is up, or brings one up (and tears down afterwards
what it started, unless `keep`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from flpg.cli.progress import watch
from flpg.local import federation
from flpg.local.embedded import home
from flpg.store import runs as store_runs
from flpg.store.db import redact
from flpg.store.resources import examples_dir
from flpg.submit.run import submit


@dataclass(frozen=True)
class DemoResult:
    run_id: int
    status: str
    final_accuracy: float | None
    wall_seconds: float


def run_demo(
    url: str, *, started_db: bool, nodes: int, rounds: int | None, keep: bool, tty: bool | None
) -> DemoResult:
    """Run the digits example on a local federation and print its summary."""
    console = Console(soft_wrap=True, highlight=False)
    began = time.monotonic()
    flpg_home = home()
    existing = federation.load(flpg_home)
    if existing is not None and existing.alive() and existing.url == url:
        fed, started = existing, False
        console.print(f"using the local federation that is up ({existing.num_nodes} nodes)")
    else:
        console.print(f"starting a local federation: 1 link, 1 exec, {nodes} nodes ...")
        fed, started = federation.up(flpg_home, url, nodes, started_db=started_db)
    app_dir = examples_dir() / "digits"
    from flpg.store.db import connect

    try:
        with connect(url, application_name="flpg-demo") as conn:
            overrides = f"num-server-rounds={rounds}" if rounds else None
            submitted = submit(conn, app_dir, run_config=overrides)
            run = store_runs.get(conn, submitted.run_id)
            total = int(run.run_config.get("num-server-rounds", 0)) or None
            console.print(
                f"run {submitted.run_id}: digits (8x8 images, 10 classes) on "
                f"{len(submitted.node_ids)} nodes, {total} rounds"
            )
            run = watch(conn, url, submitted.run_id, total_rounds=total, show_logs=False, tty=tty)
            metrics = store_runs.round_metrics(conn, submitted.run_id)
        wall = time.monotonic() - began
        final = _summary(console, run.id, run.status, run.reason, metrics, wall, url)
        return DemoResult(run.id, run.status, final, wall)
    finally:
        if started and not keep:
            federation.down(flpg_home)
            console.print("local federation stopped (use --keep to leave it up)")
            if fed.started_db:
                from flpg.local.embedded import cluster

                cluster().stop()
        elif started:
            console.print("local federation left up: `flpg down` stops it")


def _summary(
    console: Console,
    run_id: int,
    status: str,
    reason: str | None,
    rows: list[dict[str, Any]],
    wall: float,
    url: str,
) -> float | None:
    by_round: dict[int, dict[str, Any]] = {}
    for row in rows:
        entry = by_round.setdefault(row["round"], {})
        for key, value in row["metrics"].items():
            entry[f"{row['phase']}:{key}"] = value
    table = Table("round", "train loss", "train acc", "federated eval acc", "test acc (server)")
    final: float | None = None
    for server_round in sorted(by_round):
        m = by_round[server_round]
        if server_round == 0:
            continue
        final = m.get("server_evaluate:accuracy", final)

        def fmt(key: str, m: dict[str, Any] = m) -> str:
            value = m.get(key)
            return f"{value:.4f}" if isinstance(value, float) else ""

        table.add_row(
            str(server_round),
            fmt("train:train-loss"),
            fmt("train:train-accuracy"),
            fmt("evaluate:eval-accuracy"),
            fmt("server_evaluate:accuracy"),
        )
    console.print(table)
    outcome = status + (f" ({reason})" if reason else "")
    console.print(f"run {run_id} {outcome} in {wall:.1f} s wall time")
    if final is not None:
        console.print(f"final test accuracy (held-out set): {final:.4f}")
    console.print("audit it with SQL, e.g.:")
    console.print(f'  psql "{redact(url)}" -c \\', markup=False)
    console.print(
        f'    "SELECT round, phase, metrics FROM round_history WHERE run_id = {run_id} '
        'ORDER BY round, phase"',
        markup=False,
    )
    return final
