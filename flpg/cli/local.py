"""The local-federation commands: `flpg up`, `flpg down`, `flpg demo`, `flpg new`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flpg.cli import options, render_local
from flpg.cli._base import db_option, handle_errors, resolve_url_started
from flpg.cli.db import listen_option, print_serving, serve_embedded
from flpg.errors import ConfigError
from flpg.settings import explicit_database_url
from flpg.states import RunStatus
from flpg.store.db import redact


@click.command("up")
@db_option
@click.option(
    "--nodes",
    "num_nodes",
    type=options.LOCAL_NODES,
    default=3,
    show_default=True,
    help="Node workers to start (partition-id 0..N-1).",
)
@listen_option
@handle_errors
def up_cmd(db: str | None, num_nodes: int, listen: str | None) -> None:
    """Start a local federation in the background: one link, one exec, N nodes."""
    from flpg.local import federation
    from flpg.local.embedded import cluster, home

    if listen is not None:
        if explicit_database_url(db):
            raise ConfigError("--listen serves the embedded cluster; drop --db/$FLPG_DATABASE_URL")
        was_running = cluster().status().running
        serving = serve_embedded(listen)
        print_serving(serving)
        url, started_db = serving.url, not was_running
    else:
        url, started_db = resolve_url_started(db)
    fed, started = federation.up(home(), url, num_nodes, started_db=started_db)
    render_local.federation_up(started, fed.num_nodes, redact(url), home() / "logs")


@click.command("down")
@handle_errors
def down_cmd() -> None:
    """Stop the local federation started by `flpg up`."""
    from flpg.local import federation
    from flpg.local.embedded import cluster, home

    stopped, fed = federation.down(home())
    render_local.federation_down(None if fed is None else stopped)
    if fed is not None and fed.started_db and cluster().stop():
        render_local.embedded_db_stopped()


@click.command("demo")
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
    from flpg.local.demo import run_demo

    url, started_db = resolve_url_started(db)
    result = run_demo(
        url, started_db=started_db, nodes=num_nodes, rounds=rounds, keep=keep, tty=None
    )
    if result.status != RunStatus.FINISHED:
        sys.exit(1)


@click.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "target",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the app directory.",
)
@click.option(
    "--framework",
    type=click.Choice(["numpy", "sklearn", "pytorch"], case_sensitive=False),  # scaffold.FRAMEWORKS
    default="numpy",
    show_default=True,
    help="The ClientApp's framework (Flower's names; pytorch needs torch where it runs).",
)
@handle_errors
def new_cmd(name: str, target: Path, framework: str) -> None:
    """Create a working app skeleton NAME (ServerApp with FedAvg, ClientApp)."""
    from flpg.local.scaffold import create_app

    render_local.app_created(create_app(name, target, framework))


COMMANDS = (up_cmd, down_cmd, demo_cmd, new_cmd)
"""The commands this module adds to `flpg`."""
