"""Showing a run as it trains: a live progress bar on a terminal, plain lines otherwise.

Progress comes from the database (`round_metrics`), not from parsing output, so
it works for any strategy that records its rounds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from flpg.cli.follow import follow, render
from flpg.states import TERMINAL
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from flpg.store.logs import LogLine
from flpg.store.runs import Run

SHOWN_METRICS = ("train-loss", "train-accuracy", "eval-accuracy", "accuracy", "loss")


def _metrics_text(rows: list[dict[str, Any]], server_round: int) -> str:
    merged: dict[str, Any] = {}
    for row in rows:
        if row["round"] == server_round:
            prefix = "server-" if row["phase"] == "server_evaluate" else ""
            merged.update({f"{prefix}{k}": v for k, v in row["metrics"].items()})
    parts = [f"{k}={v:.4g}" for k, v in merged.items() if isinstance(v, float)]
    return " ".join(parts[:5])


def _done_rounds(rows: list[dict[str, Any]]) -> int:
    """The newest round whose training phase is recorded (0 before any)."""
    return max((r["round"] for r in rows if r["phase"] == "train"), default=0)


def watch(
    conn: Connection,
    url: str,
    run_id: int,
    *,
    total_rounds: int | None,
    show_logs: bool,
    tty: bool | None = None,
) -> Run:
    """Follow a run to its end, showing rounds as they complete; returns the ended run."""
    console = Console(file=sys.stdout, soft_wrap=True, highlight=False)
    tty = console.is_terminal if tty is None else tty
    if tty:
        return _watch_bar(conn, url, run_id, console, total_rounds, show_logs)
    return _watch_lines(conn, url, run_id, total_rounds, show_logs)


def _watch_bar(
    conn: Connection,
    url: str,
    run_id: int,
    console: Console,
    total_rounds: int | None,
    show_logs: bool,
) -> Run:
    """`watch` on a terminal: a live progress bar, log lines printed above it."""
    progress = Progress(
        TextColumn(
            "[bold]run {task.fields[run_id]}[/] round {task.completed:.0f}/{task.fields[of]}"
        ),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    )
    task = progress.add_task("", total=total_rounds, run_id=run_id, of=total_rounds or "?")

    def emit(line: LogLine) -> None:
        if show_logs:
            progress.console.print(render(line), markup=False)

    def tick(_run: Run) -> None:
        rows = store_runs.round_metrics(conn, run_id)
        seen_round = _done_rounds(rows)
        progress.update(task, completed=seen_round, description=_metrics_text(rows, seen_round))

    with progress:
        run = follow(conn, url, run_id, emit, tick=tick)
        tick(run)
    return run


def _watch_lines(
    conn: Connection, url: str, run_id: int, total_rounds: int | None, show_logs: bool
) -> Run:
    """`watch` elsewhere: the log lines (`show_logs`), else one line per completed round."""
    started = time.monotonic()
    seen_round = 0

    def emit(line: LogLine) -> None:
        if show_logs:
            print(render(line), flush=True)

    def tick(_run: Run) -> None:
        nonlocal seen_round
        if show_logs:
            return
        rows = store_runs.round_metrics(conn, run_id)
        latest = _done_rounds(rows)
        if _run.status not in TERMINAL:
            latest -= 1  # the newest round may still be evaluating
        for server_round in range(seen_round + 1, latest + 1):
            print(
                f"round {server_round}/{total_rounds or '?'} "
                f"({time.monotonic() - started:.1f} s) {_metrics_text(rows, server_round)}",
                flush=True,
            )
        seen_round = max(seen_round, latest)

    run = follow(conn, url, run_id, emit, tick=tick)
    tick(run)
    return run
