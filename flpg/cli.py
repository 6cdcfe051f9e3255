"""The `flpg` command line. Each command parses options, calls one function, prints.

Every command takes `--db URL` (or `FLPG_DATABASE_URL`); without either it uses
the embedded default cluster. Options are checked by the types in `flpg.options`;
every failure (a usage error, an FlpgError, a database error translated by
`flpg.store.errors`) prints one line `flpg: error: ...` and exits with the code of
its class (see `flpg.errors`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from flpg import options
from flpg.config import parse_kv, parse_kv_all
from flpg.db import Connection, connect, redact
from flpg.errors import FlpgError
from flpg.limits import check_name
from flpg.settings import DATABASE_URL_ENV, Intervals, explicit_database_url
from flpg.store.errors import translated

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    """Print `flpg: error: MESSAGE` as one line (whatever the message holds) and exit."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    click.echo(f"flpg: error: {line or 'failed'}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn FlpgError (database errors translated first) into one line and its exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with translated(explicit_database_url(kwargs.get("db"))):
                return fn(*args, **kwargs)
        except FlpgError as exc:
            _fail(str(exc), exc.exit_code)
        return None

    return wrapper  # type: ignore[return-value]


_NoArgsIsHelp: type[click.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_Never", (click.UsageError,), {})
)


class FlpgGroup(click.Group):
    """Click's usage errors, and FlpgErrors raised by option types, as one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except _NoArgsIsHelp as exc:  # `flpg` or `flpg db` alone: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint, 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("aborted", 130)
        except FlpgError as exc:
            _fail(str(exc), exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


db_option = click.option(
    "--db",
    "db",
    type=options.DATABASE_URL,
    metavar="URL",
    envvar=DATABASE_URL_ENV,
    help=f"PostgreSQL URL (default: ${DATABASE_URL_ENV}, else the embedded cluster).",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def resolve_url(db: str | None) -> str:
    """The database URL to use, starting the embedded cluster if none was given."""
    return resolve_url_started(db)[0]


def resolve_url_started(db: str | None) -> tuple[str, bool]:
    """The database URL, and whether this call started the embedded cluster."""
    url = explicit_database_url(db)
    if url:
        return url, False
    from flpg.embedded import cluster

    embedded = cluster()
    was_running = embedded.status().running
    return embedded.ensure_running(), not was_running


def open_db(db: str | None) -> tuple[str, Connection]:
    """Resolve, migrate if needed, and connect."""
    from flpg.migrate import ensure_schema

    url = resolve_url(db)
    connect(url, application_name="flpg-cli").close()  # a clear error before migrating
    ensure_schema(url)
    return url, connect(url, application_name="flpg-cli")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)


@click.group(cls=FlpgGroup)
@click.version_option(package_name="flpg")
def main() -> None:
    """flpg: federated learning with the Flower architecture, on PostgreSQL."""


# ---------------------------------------------------------------- database


@main.group()
def db() -> None:
    """Manage the database: schema migrations and the embedded cluster."""


@db.command("upgrade")
@db_option
@handle_errors
def db_upgrade(db: str | None) -> None:
    """Migrate the schema to the newest revision (idempotent)."""
    from flpg.migrate import check, head_revision, upgrade

    url = resolve_url(db)
    connect(url, application_name="flpg-cli").close()
    before = check(url)
    upgrade(url)
    click.echo(f"schema at {head_revision()} (was {before or 'empty'}) on {redact(url)}")


@db.command("status")
@db_option
@handle_errors
def db_status(db: str | None) -> None:
    """Where the database is, whether it runs, and its schema revision."""
    from flpg.embedded import cluster
    from flpg.migrate import current_revision

    url = explicit_database_url(db)
    if url:
        click.echo(f"database: {redact(url)} (from --db / {DATABASE_URL_ENV})")
        click.echo(f"schema: {_revision_text(current_revision(url))}")
        return
    status = cluster().status()
    click.echo(f"embedded cluster: {status.root}")
    click.echo(f"running: {f'yes (pid {status.pid})' if status.running else 'no'}")
    click.echo(f"initialised: {'yes' if status.initialised else 'no'}")
    click.echo(f"url: {status.url}")
    if status.running:
        click.echo(f"schema: {_revision_text(current_revision(status.url))}")


def _revision_text(revision: str | None) -> str:
    from flpg.migrate import head_revision, known_revisions

    if revision is not None and revision not in known_revisions():
        return f"{revision} (unknown to this flpg, whose newest is {head_revision()})"
    return f"{revision or 'empty'} (newest {head_revision()})"


@db.command("stop")
@handle_errors
def db_stop() -> None:
    """Stop the embedded cluster (the next command starts it again)."""
    from flpg.embedded import cluster

    was_running = cluster().stop()
    click.echo("embedded cluster stopped" if was_running else "embedded cluster was not running")


# ---------------------------------------------------------------- workers


def _serve(worker: Any, verbose: bool) -> None:
    from flpg.lifecycle import setup_logging, stop_on_signals

    setup_logging(verbose)
    worker.run(stop_on_signals())


@main.command("link")
@db_option
@click.option("--sweep", type=options.SECONDS, help="Seconds between sweeps.")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def link_cmd(db: str | None, sweep: float | None, verbose: bool) -> None:
    """Run a SuperLink: node liveness, leases, TTL expiry, silent ServerApps."""
    from dataclasses import replace

    from flpg.link.worker import LinkWorker

    intervals = Intervals.from_env()
    if sweep is not None:
        intervals = replace(intervals, sweep=sweep)
    _serve(LinkWorker(resolve_url(db), intervals=intervals), verbose)


@main.command("exec")
@db_option
@click.option(
    "--max-runs",
    type=options.MAX_RUNS,
    default=4,
    show_default=True,
    help="ServerApps this worker runs at once.",
)
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def exec_cmd(db: str | None, max_runs: int, verbose: bool) -> None:
    """Run a SuperExec: launch pending runs as ServerApp processes."""
    from flpg.exec.worker import ExecWorker

    _serve(ExecWorker(resolve_url(db), max_runs=max_runs), verbose)


@main.command("node")
@db_option
@click.option(
    "--name",
    type=options.NODE_NAME,
    required=True,
    help="The node's name (not all digits); workers with one name share its id.",
)
@click.option(
    "--node-config",
    type=options.KEY_VALUES,
    default="",
    help='e.g. "partition-id=0 num-partitions=2".',
)
@click.option(
    "--label",
    "labels",
    type=options.KEY_VALUES,
    multiple=True,
    help='key=value label (repeatable), e.g. region=eu or site="lab 2".',
)
@click.option(
    "--concurrency",
    type=options.CONCURRENCY,
    default=4,
    show_default=True,
    help="Messages handled at once.",
)
@click.option(
    "--virtual",
    type=options.VIRTUAL,
    default=None,
    metavar="N",
    help="Serve N node ids NAME-0..NAME-(N-1), each with partition-id i and "
    "num-partitions N added to its node config (simulate a large federation).",
)
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def node_cmd(
    db: str | None,
    name: str,
    node_config: str,
    labels: tuple[str, ...],
    concurrency: int,
    virtual: int | None,
    verbose: bool,
) -> None:
    """Run a SuperNode worker: claim this node's messages and run ClientApps on them."""
    from flpg.node.worker import NodeSpec, NodeWorker, virtual_specs

    if virtual is not None:
        check_name(f"{name}-{virtual - 1}", f"--name with --virtual {virtual}, node name")
    spec = NodeSpec(
        name=name,
        node_config=parse_kv(node_config, "--node-config"),
        labels=parse_kv_all(labels, "--label"),
    )
    specs = [spec] if virtual is None else virtual_specs(spec, virtual)
    _serve(NodeWorker(resolve_url(db), specs, concurrency=concurrency), verbose)


# ---------------------------------------------------------------- runs


@main.command("run")
@click.argument("app_dir", type=click.Path(path_type=Path))
@db_option
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
    from flpg.submit import submit

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
        if fmt == "json" and not stream:
            _print_json(
                {
                    "run_id": submitted.run_id,
                    "app": submitted.app_name,
                    "app_hash": submitted.app_hash,
                    "nodes": submitted.node_ids,
                }
            )
            return
        click.echo(
            f"submitted run {submitted.run_id} ({submitted.app_name}, "
            f"{len(submitted.node_ids)} nodes)"
        )
        if stream:
            _stream(conn, url, submitted.run_id)


def _stream(conn: Connection, url: str, run_id: int) -> None:
    from flpg.progress import watch
    from flpg.store import runs as store_runs

    rounds = store_runs.get(conn, run_id).run_config.get("num-server-rounds")
    total = rounds if isinstance(rounds, int) and rounds > 0 else None
    run = watch(conn, url, run_id, total_rounds=total, show_logs=True)
    click.echo(f"run {run_id} {run.status}" + (f": {run.reason}" if run.reason else ""))
    if run.status != "finished":
        sys.exit(1)


@main.command("ls")
@db_option
@click.option("--limit", type=options.LIMIT, default=50, show_default=True)
@format_option
@handle_errors
def ls_cmd(db: str | None, limit: int, fmt: str) -> None:
    """List runs, newest first."""
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        found = store_runs.list_recent(conn, limit)
    if fmt == "json":
        _print_json(
            [
                {
                    "run_id": r.run_id,
                    "app": r.app_name,
                    "status": r.status,
                    "reason": r.reason,
                    "nodes": r.num_nodes,
                    "rounds": r.rounds_completed,
                    "submitted_at": _iso(r.submitted_at),
                    "started_at": _iso(r.started_at),
                    "finished_at": _iso(r.finished_at),
                }
                for r in found
            ]
        )
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


@main.command("show")
@click.argument("run_id", type=options.RUN_ID)
@db_option
@format_option
@handle_errors
def show_cmd(run_id: int, db: str | None, fmt: str) -> None:
    """Show one run: status, config, node selection, messages and round metrics."""
    from flpg.store import checkpoints as store_checkpoints
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        run = store_runs.get(conn, run_id)
        selection = store_runs.selection(conn, run_id)
        counts = store_runs.message_counts(conn, run_id)
        rounds = store_runs.round_metrics(conn, run_id)
        checkpoint = store_checkpoints.get(conn, run_id)
    doc: dict[str, Any] = {
        "run_id": run.id,
        "app": run.app_name,
        "app_hash": run.app_hash,
        "status": run.status,
        "reason": run.reason,
        "priority": run.priority,
        "attempt": run.attempt,
        "max_restarts": run.max_restarts,
        "checkpoint_round": None if checkpoint is None else checkpoint.round,
        "run_config": run.run_config,
        "submitted_at": _iso(run.submitted_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "exec_id": run.exec_id,
        "nodes": [{"id": n.id, "name": n.name, "status": n.status} for n in selection],
        "messages": [
            {
                "kind": "reply" if c["is_reply"] else "instruction",
                "state": c["state"],
                "count": c["n"],
            }
            for c in counts
        ],
        "rounds": [
            {
                "round": r["round"],
                "phase": r["phase"],
                "metrics": r["metrics"],
                "replies": r["num_replies"],
                "failures": r["num_failures"],
            }
            for r in rounds
        ],
    }
    if fmt == "json":
        _print_json(doc)
        return
    for key in (
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
    ):
        if doc[key] is not None:
            click.echo(f"{key + ':':14} {doc[key]}")
    click.echo(f"{'run_config:':14} {json.dumps(run.run_config)}")
    click.echo(f"{'nodes:':14} " + ", ".join(f"{n.id}:{n.name} ({n.status})" for n in selection))
    click.echo(
        f"{'messages:':14} "
        + ", ".join(f"{m['count']} {m['kind']} {m['state']}" for m in doc["messages"])
        or "none"
    )
    if rounds:
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
                for r in rounds
            ],
        )


@main.command("log")
@click.argument("run_id", type=options.RUN_ID)
@db_option
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing until the run ends.")
@handle_errors
def log_cmd(run_id: int, db: str | None, follow_: bool) -> None:
    """Print a run's ServerApp output and events."""
    from flpg.follow import render
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
            lines = store_logs.tail(conn, run_id, last)
            for line in lines:
                click.echo(render(line))
                last = line.id
            if len(lines) < 1000:
                break


@main.command("stop")
@click.argument("run_id", type=options.RUN_ID)
@db_option
@handle_errors
def stop_cmd(run_id: int, db: str | None) -> None:
    """Stop a run: its ServerApp ends and its undelivered messages are cancelled."""
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        state = store_runs.request_stop(conn, run_id)
    click.echo(f"run {run_id}: {state}")


@main.command("resume")
@click.argument("run_id", type=options.RUN_ID)
@db_option
@handle_errors
def resume_cmd(run_id: int, db: str | None) -> None:
    """Resume a failed or stopped run from its last checkpoint (a new ServerApp)."""
    from flpg.store import checkpoints as store_checkpoints
    from flpg.store import runs as store_runs

    _, conn = open_db(db)
    with conn:
        attempt = store_runs.resume(conn, run_id)
        checkpoint = store_checkpoints.get(conn, run_id)
    after = "" if checkpoint is None else f" after round {checkpoint.round}"
    click.echo(f"run {run_id}: resuming{after} as attempt {attempt}")


@main.command("nodes")
@db_option
@format_option
@handle_errors
def nodes_cmd(db: str | None, fmt: str) -> None:
    """List registered nodes."""
    from flpg.store import nodes as store_nodes

    _, conn = open_db(db)
    with conn:
        found = store_nodes.list_all(conn)
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


# ---------------------------------------------------------------- local federation


@main.command("up")
@db_option
@click.option(
    "--nodes",
    "num_nodes",
    type=options.LOCAL_NODES,
    default=3,
    show_default=True,
    help="Node workers to start (partition-id 0..N-1).",
)
@handle_errors
def up_cmd(db: str | None, num_nodes: int) -> None:
    """Start a local federation in the background: one link, one exec, N nodes."""
    from flpg import federation
    from flpg.embedded import home

    url, started_db = resolve_url_started(db)
    fed, started = federation.up(home(), url, num_nodes, started_db=started_db)
    verb = "started" if started else "already up:"
    click.echo(f"local federation {verb} 1 link, 1 exec, {fed.num_nodes} nodes on {redact(url)}")
    click.echo(f"logs: {home() / 'logs'}; stop it with `flpg down`")


@main.command("down")
@handle_errors
def down_cmd() -> None:
    """Stop the local federation started by `flpg up`."""
    from flpg import federation
    from flpg.embedded import cluster, home

    stopped, fed = federation.down(home())
    if fed is None:
        click.echo("no local federation is up")
        return
    click.echo(f"stopped {stopped} process(es) of the local federation")
    if fed.started_db and cluster().stop():
        click.echo("stopped the embedded database that `flpg up` started")


@main.command("demo")
@db_option
@click.option("--nodes", "num_nodes", type=options.LOCAL_NODES, default=3, show_default=True)
@click.option(
    "--rounds",
    type=options.ROUNDS,
    default=None,
    help="Server rounds (default: the example's).",
)
@click.option("--keep", is_flag=True, help="Leave the federation up afterwards.")
@handle_errors
def demo_cmd(db: str | None, num_nodes: int, rounds: int | None, keep: bool) -> None:
    """Train the digits example on a local federation and print a summary."""
    from flpg.demo import run_demo

    url, started_db = resolve_url_started(db)
    result = run_demo(
        url, started_db=started_db, nodes=num_nodes, rounds=rounds, keep=keep, tty=None
    )
    if result.status != "finished":
        sys.exit(1)


@main.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "target",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the app directory.",
)
@handle_errors
def new_cmd(name: str, target: Path) -> None:
    """Create a working app skeleton NAME (ServerApp with FedAvg, ClientApp)."""
    from flpg.scaffold import create_app

    path = create_app(name, target)
    click.echo(f"created {path}; run it with `flpg up` and `flpg run {path} --stream`")


if __name__ == "__main__":
    main()
