"""The run commands: `flpg run`, `ls` (and its alias `list`), `show`, `log`, `stop`, `resume`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from flpg.cli import options, render
from flpg.cli._base import _CREDENTIALS as CREDENTIALS_META
from flpg.cli._base import format_option, handle_errors, open_db, user_db_option
from flpg.errors import AppError
from flpg.states import RunStatus
from flpg.store.db import Connection

if TYPE_CHECKING:
    from flpg.store.runs import RunDetails, RunSummary

LOG_PAGE = 1000
"""Log lines `store.logs.tail` returns at most per call; a shorter page is the last."""


@click.command("run")
@click.argument("app_dir", required=False, type=click.Path(path_type=Path), metavar="[APP_DIR]")
@click.argument("federation", required=False, metavar="[FEDERATION]")
@user_db_option
@click.option(
    "--run-config",
    "-c",
    "run_config",
    type=options.CONFIG_ARG,
    multiple=True,
    help="Overrides of the app's config, as in Flower: \"num-server-rounds=5 lr=0.05 "
    "name='a b'\" (TOML values) or a TOML file; repeatable, a later one wins a key.",
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
    app_dir: Path | None,
    federation: str | None,
    db: str | None,
    run_config: tuple[str, ...],
    priority: int,
    max_restarts: int,
    nodes: str | None,
    node_selector: str | None,
    stream: bool,
    fmt: str,
) -> None:
    """Submit a run of the app in APP_DIR (default: the current directory) to
    FEDERATION, one of its pyproject's [tool.flwr.federations] (default: the table's
    `default`, else --db / $FLPG_DATABASE_URL / the embedded cluster)."""
    from flpg.submit.run import submit

    app_dir = _app_dir(app_dir)
    url, conn = open_db(_federation_db(app_dir, federation, db))
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


def _app_dir(given: Path | None) -> Path:
    """APP_DIR, or the current directory as in Flower's `flwr run`; AppError (exit 2)
    when none was given and the current directory holds no app."""
    if given is not None:
        return given
    here = Path.cwd()
    if not (here / "pyproject.toml").exists():
        raise AppError(
            f"no APP_DIR given and the current directory {here} has no pyproject.toml; "
            "give APP_DIR or run it in an app's directory (see `flpg run --help`)"
        )
    return here


def _federation_db(app_dir: Path, name: str | None, db: str | None) -> str | None:
    """The `--db` to use: the database of federation `name` (else of the pyproject's
    default federation) when it has an address, else `db`. `--db` or `--credentials`
    on the command line beats a default federation's address, and beside a FEDERATION
    argument with an address is a UsageError (exit 2)."""
    from flpg.bundle.appdir import read_app
    from flpg.submit.federation import choose_federation, federation_url

    read_app(app_dir)  # a missing or malformed app is named as such first
    chosen = choose_federation(app_dir, name)
    if chosen is None or chosen.address is None:
        return db
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("db") == ParameterSource.COMMANDLINE
    given = given or ctx.meta.get(CREDENTIALS_META) is not None
    if given and name is None:
        return db
    if given:
        raise click.UsageError(
            f"FEDERATION {name!r} and --db/--credentials each name a database; give one"
        )
    return federation_url(chosen)


def _stream(conn: Connection, url: str, run_id: int, *, exit_status: bool = True) -> None:
    """Follow the run to its end, then print how it ended; with `exit_status`, exit 1
    unless it finished."""
    from flpg.cli.progress import watch
    from flpg.store import runs as store_runs

    rounds = store_runs.get(conn, run_id).run_config.get("num-server-rounds")
    total = rounds if isinstance(rounds, int) and rounds > 0 else None
    run = watch(conn, url, run_id, total_rounds=total, show_logs=True)
    render.run_ended(run)
    if exit_status and run.status != RunStatus.FINISHED:
        sys.exit(1)


@click.command("ls")
@user_db_option
@click.option("--limit", type=options.LIMIT, default=50, show_default=True)
@click.option("--run-id", type=options.RUN_ID, default=None, help="Only this run (as in Flower).")
@click.option("--runs", is_flag=True, help="All runs (the default; as in Flower).")
@format_option
@handle_errors
def ls_cmd(db: str | None, limit: int, run_id: int | None, runs: bool, fmt: str) -> None:
    """List runs, newest first (`--run-id N`: one run)."""
    from flpg.store import runs as store_runs

    if runs and run_id is not None:
        raise click.UsageError("--runs and --run-id are mutually exclusive; give one")
    _, conn = open_db(db)
    with conn:
        if run_id is None:
            found = store_runs.list_recent(conn, limit)
        else:
            found = [_summary(store_runs.details(conn, run_id))]
    render.runs(found, fmt)


def _summary(details: RunDetails) -> RunSummary:
    """One run as `flpg ls` lists it, from its details (what the `run_history` view
    computes: the size of its selection, the newest round trained)."""
    from flpg.store.runs import RunSummary

    run = details.run
    trained = [r["round"] for r in details.rounds if r["phase"] == "train"]
    return RunSummary(
        run_id=run.id,
        app_name=run.app_name,
        app_hash=run.app_hash,
        status=run.status,
        reason=run.reason,
        num_nodes=len(details.selection),
        rounds_completed=max(trained, default=None),
        submitted_at=run.submitted_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


list_cmd = click.Command(
    "list",
    callback=ls_cmd.callback,
    params=ls_cmd.params,
    help="List runs, newest first (an alias of `flpg ls`, as in Flower).",
)


@click.command("show")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@format_option
@handle_errors
def show_cmd(run_id: int, db: str | None, fmt: str) -> None:
    """Show one run: status, config, node selection, messages, accounting and round metrics."""
    from flpg.store import accounting, pull
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        details = store_runs.details(conn, run_id)
        spent, where = accounting.of_run(conn, run_id), pull.artifact_dir(conn, run_id)
    render.run_details(details, fmt, spent, where)


@click.command("log")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@click.option(
    "--stream/--show",
    "-f",
    "--follow",
    "stream",
    default=True,
    show_default=True,
    help="--stream (also -f, --follow): print the log as it is written until the run "
    "ends, as Flower's default; --show: print what is stored now and return.",
)
@handle_errors
def log_cmd(run_id: int, db: str | None, stream: bool) -> None:
    """Print a run's ServerApp output and events (exit 0 whatever the run's outcome;
    streamed, the last line says how it ended)."""
    from flpg.store import logs as store_logs
    from flpg.store import runs as store_runs

    url, conn = open_db(db)
    with conn:
        store_runs.get(conn, run_id)
        if stream:
            _stream(conn, url, run_id, exit_status=False)
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
@format_option
@handle_errors
def stop_cmd(run_id: int, db: str | None, fmt: str) -> None:
    """Stop a run: its ServerApp ends and its undelivered messages are cancelled."""
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        state = store_runs.request_stop(conn, run_id)
    render.stopped(run_id, state, fmt)


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


COMMANDS = (run_cmd, ls_cmd, list_cmd, show_cmd, log_cmd, stop_cmd, resume_cmd)
"""The commands this module adds to `flpg`."""
