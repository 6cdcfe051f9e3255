"""The run commands: `flpg run`, `ls`, `show`, `log`, `stop`, `resume`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flpg.cli import options, render
from flpg.cli._base import format_option, handle_errors, open_db, user_db_option
from flpg.states import RunStatus
from flpg.store.db import Connection

LOG_PAGE = 1000
"""Log lines `store.logs.tail` returns at most per call; a shorter page is the last."""


@click.command("run")
@click.argument("app_dir", type=click.Path(path_type=Path))
@user_db_option
@click.option(
    "--run-config",
    type=options.KEY_VALUES,
    default=None,
    help="Overrides, e.g. \"num-server-rounds=5 lr=0.05 name='a b'\" (TOML values).",
)
@click.option(
    "--priority",
    type=options.PRIORITY,
    default=0,
    show_default=True,
    help="Higher runs launch first.",
)
@click.option(
    "--max-restarts",
    type=options.MAX_RESTARTS,
    default=0,
    show_default=True,
    help="Restart a failed ServerApp this many times (it continues from its checkpoint).",
)
@click.option(
    "--nodes",
    "nodes",
    type=options.NODE_LIST,
    default=None,
    metavar="IDS",
    help="Comma-separated node ids or names, e.g. 1,3 (default: all nodes).",
)
@click.option(
    "--node-selector",
    type=options.KEY_VALUES,
    default=None,
    metavar="K=V",
    help='Nodes whose labels or node config match, e.g. "region=eu".',
)
@click.option("--stream", is_flag=True, help="Follow the run's log; exit non-zero if it fails.")
@format_option
@handle_errors
def run_cmd(
    app_dir: Path,
    db: str | None,
    run_config: str | None,
    priority: int,
    max_restarts: int,
    nodes: str | None,
    node_selector: str | None,
    stream: bool,
    fmt: str,
) -> None:
    """Submit a run of the app in APP_DIR."""
    from flpg.submit.run import submit

    url, conn = open_db(db)
    with conn:
        submitted = submit(
            conn,
            app_dir,
            run_config=run_config,
            priority=priority,
            max_restarts=max_restarts,
            nodes=nodes,
            node_selector=node_selector,
        )
        # --stream prints the run's log, so the submission is a line there, not JSON
        render.submitted(submitted, "table" if stream else fmt)
        if stream:
            _stream(conn, url, submitted.run_id)


def _stream(conn: Connection, url: str, run_id: int) -> None:
    """Follow the run to its end; exit 1 unless it finished."""
    from flpg.cli.progress import watch
    from flpg.store import runs as store_runs

    rounds = store_runs.get(conn, run_id).run_config.get("num-server-rounds")
    total = rounds if isinstance(rounds, int) and rounds > 0 else None
    run = watch(conn, url, run_id, total_rounds=total, show_logs=True)
    render.run_ended(run)
    if run.status != RunStatus.FINISHED:
        sys.exit(1)


@click.command("ls")
@user_db_option
@click.option("--limit", type=options.LIMIT, default=50, show_default=True)
@format_option
@handle_errors
def ls_cmd(db: str | None, limit: int, fmt: str) -> None:
    """List runs, newest first."""
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        found = store_runs.list_recent(conn, limit)
    render.runs(found, fmt)


@click.command("show")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@format_option
@handle_errors
def show_cmd(run_id: int, db: str | None, fmt: str) -> None:
    """Show one run: status, config, node selection, messages and round metrics."""
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        details = store_runs.details(conn, run_id)
    render.run_details(details, fmt)


@click.command("log")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing until the run ends.")
@handle_errors
def log_cmd(run_id: int, db: str | None, follow_: bool) -> None:
    """Print a run's ServerApp output and events."""
    from flpg.store import logs as store_logs
    from flpg.store import runs as store_runs

    url, conn = open_db(db)
    with conn:
        store_runs.get(conn, run_id)
        if follow_:
            _stream(conn, url, run_id)
            return
        last = 0
        while True:
            lines = store_logs.tail(conn, run_id, last, LOG_PAGE)
            render.log_lines(lines)
            if lines:
                last = lines[-1].id
            if len(lines) < LOG_PAGE:
                break


@click.command("stop")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@handle_errors
def stop_cmd(run_id: int, db: str | None) -> None:
    """Stop a run: its ServerApp ends and its undelivered messages are cancelled."""
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        state = store_runs.request_stop(conn, run_id)
    render.stopped(run_id, state)


@click.command("resume")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@handle_errors
def resume_cmd(run_id: int, db: str | None) -> None:
    """Resume a failed or stopped run from its last checkpoint (a new ServerApp)."""
    from flpg.store import checkpoints as store_checkpoints
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        attempt = store_runs.resume(conn, run_id)
        checkpoint = store_checkpoints.get(conn, run_id)
    render.resumed(run_id, attempt, None if checkpoint is None else checkpoint.round)


COMMANDS = (run_cmd, ls_cmd, show_cmd, log_cmd, stop_cmd, resume_cmd)
"""The commands this module adds to `flpg`."""
