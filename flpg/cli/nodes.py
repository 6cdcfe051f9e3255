"""`flpg nodes`: the registered nodes; `flpg nodes rm NODE` (admin) removes an offline one.

`flpg nodes` without a subcommand lists them, as it always did. `rm` takes an offline
node out of the federation (`nodes.removed_at`): it is no longer listed or selected,
and its row and history stay; a worker registering the name again brings it back.
`rm` refuses a node that is not registered (exit 4), that is online (exit 5: its
workers still serve it), or that is enrolled (exit 5: `flpg node revoke` it first).
"""

from __future__ import annotations

import click

from flpg.cli import options, render
from flpg.cli._base import GROUP_DB, db_option, format_option, handle_errors, open_db
from flpg.errors import InvalidState, NotFound
from flpg.states import NodeStatus


@click.group("nodes", invoke_without_command=True)
@db_option
@format_option
@click.pass_context
@handle_errors
def nodes_cmd(ctx: click.Context, db: str | None, fmt: str) -> None:
    """List registered nodes; or remove an offline one (admin: `flpg nodes rm NODE`)."""
    from flpg.store import nodes as store_nodes

    if ctx.invoked_subcommand is not None:
        ctx.meta[GROUP_DB] = db  # `flpg nodes --db URL rm NODE` removes there
        return
    _, conn = open_db(db)
    with conn:
        found = store_nodes.list_all(conn)
    render.nodes(found, fmt)


@nodes_cmd.command("rm")
@click.argument("node", type=options.NODE_REF)
@db_option
@click.pass_context
@handle_errors
def rm_cmd(ctx: click.Context, node: str, db: str | None) -> None:
    """Remove the offline node NODE (an id or a name) from the federation, keeping its
    history; exit 4 if it is not registered, 5 while it is online or enrolled."""
    from flpg.store import nodes as store_nodes

    _, conn = open_db(db if db is not None else ctx.meta.get(GROUP_DB))
    with conn:
        registered = store_nodes.list_all(conn)
        found = next((n for n in registered if node in (str(n.id), n.name)), None)
        if found is None:
            known = ", ".join(f"{n.id}:{n.name}" for n in registered[:10]) or "none"
            raise NotFound(f"node {node!r} is not registered (known: {known}; see `flpg nodes`)")
        shown = f"{found.id}:{found.name}"
        if found.status == NodeStatus.ONLINE:
            raise InvalidState(
                f"node {shown} is online (last seen {found.last_seen_at:%Y-%m-%d %H:%M:%S}); "
                "stop its workers (or `flpg node revoke NAME`) and remove it once "
                "`flpg nodes` shows it offline"
            )
        if store_nodes.remove(conn, found.id) is None:
            raise InvalidState(
                f"node {shown} is enrolled (or was just brought back): revoke it first with "
                f"`flpg node revoke {found.name}`"
            )
    click.echo(f"node {shown} removed (its row and history are kept)")


COMMANDS = (nodes_cmd,)
"""The commands this module adds to `flpg`."""
