"""With `flpg.cli.render_local`, the only place that formats `flpg` output: human
text and tables (rich), and `--format json`. This module renders runs, their logs and
the nodes; `render_local` the commands about this machine (`flpg db`, `up`, `down`,
`new`).

Commands build data (store dataclasses, plain values) and hand it to one function
here; each prints to stdout. JSON documents are indented, with timestamps as ISO
8601 strings; tables have one header row and no borders, 200 columns wide when
stdout is not a terminal.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flpg.store.accounting import RunAccounting
    from flpg.store.logs import LogLine
    from flpg.store.nodes import Node
    from flpg.store.runs import Run, RunDetails, RunSummary
    from flpg.submit.run import Submitted

SHOW_FIELDS = (
    "run_id",
    "app",
    "status",
    "reason",
    "priority",
    "attempt",
    "max_restarts",
    "checkpoint_round",
    "submitted_at",
    "started_at",
    "finished_at",
    "exec_id",
)
"""The fields `flpg show` prints first, one a line, when they have a value."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _flower_time(value: datetime | None) -> str:
    """A timestamp as Flower's `flwr ls` shows it: `YYYY-MM-DD HH:MM:SSZ` (UTC), `N/A`."""
    if value is None:
        return "N/A"
    return (
        value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z").replace("T", " ")
    )


def _flower_elapsed(started: datetime | None, finished: datetime | None) -> str:
    """Time from running to finished (or now) as Flower shows it: `HH:MM:SS`, with
    `Nd ` before it past a day; `00:00:00` before the run started."""
    spent = timedelta() if started is None else (finished or datetime.now(UTC)) - started
    spent = max(spent, timedelta())
    minutes, seconds = divmod(spent.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours:02}:{minutes:02}:{seconds:02}"
    return f"{spent.days}d {clock}" if spent.days else clock


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)


# ---------------------------------------------------------------- runs


def submitted(run: Submitted, fmt: str) -> None:
    """A submitted run: its id, app, hash and nodes as JSON (flpg's keys, then those of
    Flower's `flwr run --format json` that flpg has), or one line."""
    if fmt == "json":
        _print_json(
            {
                "run_id": run.run_id,
                "app": run.app_name,
                "app_hash": run.app_hash,
                "nodes": run.node_ids,
                "success": True,
                "run-id": run.run_id,
                "fab-name": run.app_name,
                "fab-hash": run.app_hash[:8],
            }
        )
        return
    click.echo(f"submitted run {run.run_id} ({run.app_name}, {len(run.node_ids)} nodes)")


def run_ended(run: Run) -> None:
    """The final line of a followed run: its status and reason."""
    click.echo(f"run {run.id} {run.status}" + (f": {run.reason}" if run.reason else ""))


def runs(found: list[RunSummary], fmt: str) -> None:
    """`flpg ls`: runs as a JSON list (each with flpg's keys and Flower's) or a table,
    in the order given."""
    if fmt == "json":
        _print_json([_run_summary_doc(r) for r in found])
        return
    _table(
        ["RUN", "APP", "STATUS", "NODES", "ROUNDS", "SUBMITTED", "DURATION", "REASON"],
        [
            [
                r.run_id,
                r.app_name,
                r.status,
                r.num_nodes,
                r.rounds_completed,
                r.submitted_at.strftime("%Y-%m-%d %H:%M:%S"),
                f"{(r.finished_at - r.started_at).total_seconds():.1f}s"
                if r.finished_at and r.started_at
                else None,
                r.reason,
            ]
            for r in found
        ],
    )


def _run_summary_doc(r: RunSummary) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "app": r.app_name,
        "app_hash": r.app_hash,
        "status": r.status,
        "reason": r.reason,
        "nodes": r.num_nodes,
        "rounds": r.rounds_completed,
        "submitted_at": _iso(r.submitted_at),
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
        # Flower's `flwr ls --format json` keys (its `status` is flpg's, above)
        "run-id": r.run_id,
        "fab-id": r.app_name,
        "fab-name": r.app_name,
        "fab-version": "",
        "fab-hash": r.app_hash[:8],  # as `flwr ls` and `flpg run --format json` show it
        "status-details": r.reason or "",
        "elapsed": _flower_elapsed(r.started_at, r.finished_at),
        "created-at": _flower_time(r.submitted_at),
        "running-at": _flower_time(r.started_at),
        "finished-at": _flower_time(r.finished_at),
    }


def _details_doc(details: RunDetails) -> dict[str, Any]:
    run = details.run
    return {
        "run_id": run.id,
        "app": run.app_name,
        "app_hash": run.app_hash,
        "status": run.status,
        "reason": run.reason,
        "priority": run.priority,
        "attempt": run.attempt,
        "max_restarts": run.max_restarts,
        "checkpoint_round": details.checkpoint_round,
        "run_config": run.run_config,
        "submitted_at": _iso(run.submitted_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "exec_id": run.exec_id,
        "nodes": [{"id": n.id, "name": n.name, "status": n.status} for n in details.selection],
        "messages": [
            {
                "kind": "reply" if c["is_reply"] else "instruction",
                "state": c["state"],
                "count": c["n"],
            }
            for c in details.message_counts
        ],
        "rounds": [
            {
                "round": r["round"],
                "phase": r["phase"],
                "metrics": r["metrics"],
                "replies": r["num_replies"],
                "failures": r["num_failures"],
            }
            for r in details.rounds
        ],
    }


def run_details(
    details: RunDetails,
    fmt: str,
    accounting: RunAccounting | None = None,
    artifacts: str | None = None,
) -> None:
    """`flpg show`: one JSON document, or the set fields one a line, then the run
    config, the nodes, the message counts, the accounting and artifact directory (when
    given: `flpg.cli.render_accounting`) and a table of round metrics."""
    from flpg.cli import render_accounting as more

    doc = {**_details_doc(details), **more.show_doc(accounting, artifacts)}
    if fmt == "json":
        _print_json(doc)
        return
    for key in SHOW_FIELDS:
        if doc[key] is not None:
            click.echo(f"{key + ':':14} {doc[key]}")
    click.echo(f"{'run_config:':14} {json.dumps(details.run.run_config)}")
    click.echo(
        f"{'nodes:':14} " + ", ".join(f"{n.id}:{n.name} ({n.status})" for n in details.selection)
    )
    click.echo(
        f"{'messages:':14} "
        + ", ".join(f"{m['count']} {m['kind']} {m['state']}" for m in doc["messages"])
    )
    more.show_text(accounting, artifacts)
    if details.rounds:
        _table(
            ["ROUND", "PHASE", "REPLIES", "FAILURES", "METRICS"],
            [
                [
                    r["round"],
                    r["phase"],
                    r["num_replies"],
                    r["num_failures"],
                    json.dumps(r["metrics"]),
                ]
                for r in details.rounds
            ],
        )


def resumed(run_id: int, attempt: int, checkpoint_round: int | None) -> None:
    """`flpg resume`: the attempt that resumes the run, and after which round."""
    after = "" if checkpoint_round is None else f" after round {checkpoint_round}"
    click.echo(f"run {run_id}: resuming{after} as attempt {attempt}")


def log_lines(lines: list[LogLine]) -> None:
    """A run's log lines (ServerApp output and events), one a line."""
    from flpg.cli.follow import render

    for entry in lines:
        click.echo(render(entry))


def stopped(run_id: int, state: str, fmt: str = "table") -> None:
    """`flpg stop`: the state the stop request left the run in, as one line or as
    Flower's `flwr stop --format json` document with flpg's `run_id` and `status`."""
    if fmt == "json":
        _print_json({"success": True, "run-id": run_id, "run_id": run_id, "status": state})
        return
    click.echo(f"run {run_id}: {state}")


# ---------------------------------------------------------------- nodes


def nodes(found: list[Node], fmt: str) -> None:
    """`flpg nodes`: registered nodes as a JSON list or a table."""
    if fmt == "json":
        _print_json(
            [
                {
                    "id": n.id,
                    "name": n.name,
                    "status": n.status,
                    "node_config": n.node_config,
                    "labels": n.labels,
                    "last_seen_at": _iso(n.last_seen_at),
                }
                for n in found
            ]
        )
        return
    _table(
        ["ID", "NAME", "STATUS", "NODE CONFIG", "LABELS", "LAST SEEN"],
        [
            [
                n.id,
                n.name,
                n.status,
                json.dumps(n.node_config),
                json.dumps(n.labels),
                n.last_seen_at.strftime("%Y-%m-%d %H:%M:%S"),
            ]
            for n in found
        ],
    )
