"""The worker commands: `flpg link`, `flpg exec`, `flpg node`, and `flpg nodes`
(the nodes they registered). `flpg link`, `flpg exec` and `flpg node` are groups:
without a subcommand each runs its worker; their subcommands (`enroll`, `revoke`,
in `flpg.cli.principals`) are admin's. A worker given `--credentials FILE` connects
as the role of that file, which must be of the worker's kind (exit 2 otherwise).
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from flpg.cli import options, principals
from flpg.cli._base import (
    GROUP_DB,
    credentials_db_option,
    credentials_node_name,
    handle_errors,
    resolve_url,
)
from flpg.settings import Intervals
from flpg.submit.config import parse_config_arg, parse_kv_all
from flpg.submit.limits import check_name

APP_USER_HELP = (
    "Run the app processes as this OS user (the worker must run as root): they cannot "
    "read the worker's files, signal it, or write the app cache. See docs/security.md."
)


def _app_user(name: str | None, db: str | None) -> tuple[str, Any]:
    """The worker's URL and its `--app-user` (or None), checked before the worker
    starts (ConfigError, exit 2): who runs it and USER first, then the database."""
    if name is None:
        return resolve_url(db), None
    from flpg.bundle.appuser import app_user, check_sandbox
    from flpg.bundle.cache import default_cache_dir

    user = app_user(name)
    url = resolve_url(db)
    check_sandbox(user, default_cache_dir(), url)
    return url, user


def _serve(worker: Any, verbose: bool) -> None:
    from flpg.lifecycle import setup_logging, stop_on_signals

    setup_logging(verbose)
    worker.run(stop_on_signals())


def _admin_subcommand(ctx: click.Context, db: str | None) -> bool:
    """True when the group was given a subcommand: then the worker's own options
    are refused (UsageError) and `--db` is kept for the subcommand."""
    sub = ctx.invoked_subcommand
    if sub is None:
        return False
    for param in ctx.command.params:
        if param.name != "db" and ctx.get_parameter_source(param.name or "") == (
            ParameterSource.COMMANDLINE
        ):
            flag = max(param.opts, key=len) if isinstance(param, click.Option) else param.name
            raise click.UsageError(
                f"{flag} runs the worker; `{ctx.command_path} {sub}` takes its own options "
                "and NAME as its argument",
                ctx=ctx,
            )
    ctx.meta[GROUP_DB] = db  # `flpg node --db URL enroll ...` enrols there
    return True


@click.group("link", invoke_without_command=True)
@credentials_db_option("link")
@click.option("--sweep", type=options.SECONDS, help="Seconds between sweeps.")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
@handle_errors
def link_cmd(ctx: click.Context, db: str | None, sweep: float | None, verbose: bool) -> None:
    """Run a SuperLink: node liveness, leases, TTL expiry, silent ServerApps; or enrol
    and revoke link roles (admin, subcommands)."""
    from dataclasses import replace

    from flpg.link.worker import LinkWorker

    if _admin_subcommand(ctx, db):
        return
    intervals = Intervals.from_env()
    if sweep is not None:
        intervals = replace(intervals, sweep=sweep)
    _serve(LinkWorker(resolve_url(db), intervals=intervals), verbose)


@click.group("exec", invoke_without_command=True)
@credentials_db_option("exec")
@click.option(
    "--max-runs",
    type=options.MAX_RUNS,
    default=4,
    show_default=True,
    help="ServerApps this worker runs at once.",
)
@click.option("--app-user", metavar="USER", default=None, help=APP_USER_HELP)
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
@handle_errors
def exec_cmd(
    ctx: click.Context, db: str | None, max_runs: int, app_user: str | None, verbose: bool
) -> None:
    """Run a SuperExec: launch pending runs as ServerApp processes; or enrol and
    revoke exec roles (admin, subcommands)."""
    from flpg.exec.worker import ExecWorker

    if _admin_subcommand(ctx, db):
        return
    url, user = _app_user(app_user, db)
    _serve(ExecWorker(url, max_runs=max_runs, app_user=user), verbose)


@click.group("node", invoke_without_command=True)
@credentials_db_option("node")
@click.option(
    "--name",
    type=options.NODE_NAME,
    default=None,
    help="The node's name (not all digits); workers with one name share its id. "
    "Required to run the worker.",
)
@click.option(
    "--node-config",
    type=options.CONFIG_ARG,
    default="",
    help='e.g. "partition-id=0 num-partitions=2", or a TOML file whose tables become '
    "dotted keys, as in Flower (an enrolled node's is set at enrolment).",
)
@click.option(
    "--label",
    "labels",
    type=options.KEY_VALUES,
    multiple=True,
    help='key=value label (repeatable), e.g. region=eu or site="lab 2" (an enrolled '
    "node's are set at enrolment).",
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
@click.option("--app-user", metavar="USER", default=None, help=APP_USER_HELP)
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
    app_user: str | None,
    verbose: bool,
) -> None:
    """Run a SuperNode worker: claim this node's messages and run ClientApps on them
    (`flpg node --name NAME ...`); or enrol and revoke nodes (admin, subcommands)."""
    from flpg.node.worker import NodeSpec, NodeWorker, virtual_specs

    if _admin_subcommand(ctx, db):
        return
    name = name or credentials_node_name()  # an enrolled node's file names it
    if name is None:
        raise click.UsageError(
            "Missing option '--name' (or --credentials FILE of an enrolled node).", ctx=ctx
        )

    if virtual is not None:
        check_name(f"{name}-{virtual - 1}", f"--name with --virtual {virtual}, node name")
    spec = NodeSpec(
        name=name,
        node_config=parse_config_arg(node_config, "--node-config"),
        labels=parse_kv_all(labels, "--label"),
    )
    specs = [spec] if virtual is None else virtual_specs(spec, virtual)
    given = bool(spec.labels or spec.node_config)  # an enrolled node may set neither
    url, user = _app_user(app_user, db)
    worker = NodeWorker(url, specs, concurrency=concurrency, settings_given=given, app_user=user)
    _serve(worker, verbose)


for _group, _subcommands in (
    (node_cmd, principals.NODE_SUBCOMMANDS),
    (link_cmd, principals.LINK_SUBCOMMANDS),
    (exec_cmd, principals.EXEC_SUBCOMMANDS),
):
    for _command in _subcommands:
        _group.add_command(_command)

COMMANDS = (link_cmd, exec_cmd, node_cmd)
"""The commands this module adds to `flpg`."""
