"""The worker commands: `flpg link`, `flpg exec`, `flpg node`, and `flpg nodes`
(the nodes they registered). `flpg node` is a group: without a subcommand it runs
the node worker; its subcommands (`enroll`, `revoke`, in `flpg.cli.principals`) are
admin's."""

from __future__ import annotations

from typing import Any

import click

from flpg.cli import options, render
from flpg.cli._base import db_option, format_option, handle_errors, open_db, resolve_url
from flpg.settings import Intervals
from flpg.submit.config import parse_kv, parse_kv_all
from flpg.submit.limits import check_name

NODE_DB = "flpg.node.db"
"""`ctx.meta` key: the `--db` given to `flpg node` before a subcommand."""


def _serve(worker: Any, verbose: bool) -> None:
    from flpg.lifecycle import setup_logging, stop_on_signals

    setup_logging(verbose)
    worker.run(stop_on_signals())


@click.command("link")
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


@click.command("exec")
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


@click.group("node", invoke_without_command=True)
@db_option
@click.option(
    "--name",
    type=options.NODE_NAME,
    default=None,
    help="The node's name (not all digits); workers with one name share its id. "
    "Required to run the worker.",
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
@click.pass_context
@handle_errors
def node_cmd(
    ctx: click.Context,
    db: str | None,
    name: str | None,
    node_config: str,
    labels: tuple[str, ...],
    concurrency: int,
    virtual: int | None,
    verbose: bool,
) -> None:
    """Run a SuperNode worker: claim this node's messages and run ClientApps on them
    (`flpg node --name NAME ...`); or enrol and revoke nodes (admin, subcommands)."""
    from flpg.node.worker import NodeSpec, NodeWorker, virtual_specs

    if ctx.invoked_subcommand is not None:
        if name is not None:
            raise click.UsageError(
                f"--name runs the worker; `flpg node {ctx.invoked_subcommand}` takes NAME "
                "as its argument",
                ctx=ctx,
            )
        ctx.meta[NODE_DB] = db  # `flpg node --db URL enroll ...` enrols there
        return
    if name is None:
        raise click.UsageError("Missing option '--name'.", ctx=ctx)

    if virtual is not None:
        check_name(f"{name}-{virtual - 1}", f"--name with --virtual {virtual}, node name")
    spec = NodeSpec(
        name=name,
        node_config=parse_kv(node_config, "--node-config"),
        labels=parse_kv_all(labels, "--label"),
    )
    specs = [spec] if virtual is None else virtual_specs(spec, virtual)
    _serve(NodeWorker(resolve_url(db), specs, concurrency=concurrency), verbose)


@click.command("nodes")
@db_option
@format_option
@handle_errors
def nodes_cmd(db: str | None, fmt: str) -> None:
    """List registered nodes."""
    from flpg.store import nodes as store_nodes

    _, conn = open_db(db)
    with conn:
        found = store_nodes.list_all(conn)
    render.nodes(found, fmt)


COMMANDS = (link_cmd, exec_cmd, node_cmd, nodes_cmd)
"""The commands this module adds to `flpg`."""
