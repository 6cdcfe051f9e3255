"""The `flpg` group and the registration of its commands, one module per group.

Every command takes `--db URL` (or `FLPG_DATABASE_URL`); without either it uses
the embedded default cluster. Options are checked by the types in `flpg.cli.options`;
failures go through the one handler in `flpg.cli._base`; output is formatted by
`flpg.cli.render` alone.
"""

from __future__ import annotations

import click

from flpg.cli import db, gc, local, nodes, principals, pull, runs, ui, workers
from flpg.cli._base import FlpgGroup


@click.group(cls=FlpgGroup)
@click.version_option(package_name="flpg")
def main() -> None:
    """flpg: federated learning with the Flower architecture, on PostgreSQL."""


for _command in (
    *runs.COMMANDS,
    *workers.COMMANDS,
    *nodes.COMMANDS,
    *principals.COMMANDS,
    *local.COMMANDS,
    *gc.COMMANDS,
    *pull.COMMANDS,
    *ui.COMMANDS,
    db.db,
):
    main.add_command(_command)
