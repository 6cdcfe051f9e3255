"""Enrolment and revocation (admin): `flpg node enroll|revoke`, `flpg link
enroll|revoke`, `flpg exec enroll|revoke`, `flpg user add|revoke`, `flpg auditor
add|revoke`.

Each connects like every command (`--db`, else the embedded cluster) as admin,
creates or drops a login role (`flpg.store.principals`) and, for a new role,
writes its credential file (`flpg.cli.credfiles`). The node, link and exec
subcommands hang under the worker groups of `flpg.cli.workers`, which run the
worker when no subcommand is given; a `--db` given to the group before the
subcommand is used.
"""

from __future__ import annotations

from pathlib import Path

import click

from flpg.cli import options
from flpg.cli._base import GROUP_DB, db_option, handle_errors, open_db
from flpg.cli.credfiles import check_host, host_option, out_option, write_file
from flpg.errors import BadValue


def _group_db(db: str | None) -> str | None:
    """`--db` of the subcommand, else the one given to its group before it."""
    if db is not None:
        return db
    given: str | None = click.get_current_context().meta.get(GROUP_DB)
    return given


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A participant's name: printable, not empty, at most NAME_LIMIT characters."""
    from flpg.submit.limits import NAME_LIMIT, check_text

    check_text(value, "NAME")
    if not value.strip() or not value.isprintable() or len(value) > NAME_LIMIT:
        raise BadValue(
            f"NAME {value!r} must be printable, not empty, at most {NAME_LIMIT} characters"
        )
    return value


@click.command("enroll")
@click.argument("name", type=options.NODE_NAME)
@click.option(
    "--label",
    "labels",
    type=options.KEY_VALUES,
    multiple=True,
    help="key=value label (repeatable); runs select nodes by them.",
)
@click.option(
    "--node-config",
    type=options.CONFIG_ARG,
    default=None,
    help='e.g. "partition-id=0 num-partitions=2", or a TOML file whose tables become '
    "dotted keys, as in Flower (default: a registered node keeps its own).",
)
@click.option(
    "--virtual",
    type=options.VIRTUAL,
    default=None,
    metavar="N",
    help="One role for N node ids NAME-0..NAME-(N-1), each with partition-id i and "
    "num-partitions N added to its node config (`flpg node --name NAME --virtual N`).",
)
@out_option
@host_option
@db_option
@handle_errors
def node_enroll_cmd(
    name: str,
    labels: tuple[str, ...],
    node_config: str | None,
    virtual: int | None,
    out: Path | None,
    host: str | None,
    db: str | None,
) -> None:
    """Enrol node NAME (admin): a login role in flpg_node mapped to its node id(s),
    with the labels and node config its worker may not change, and its credential
    file."""
    from flpg.node.worker import NodeSpec, virtual_specs
    from flpg.store import principals as store_principals
    from flpg.submit.config import parse_config_arg, parse_kv_all
    from flpg.submit.limits import check_name

    db = _group_db(db)
    base = NodeSpec(
        name, parse_config_arg(node_config or "", "--node-config"), parse_kv_all(labels, "--label")
    )
    if virtual is not None:
        check_name(f"{name}-{virtual - 1}", f"NAME with --virtual {virtual}, node name")
    specs = [base] if virtual is None else virtual_specs(base, virtual)
    nodes = [
        store_principals.NodeSettings(
            s.name,
            s.node_config if node_config is not None or virtual is not None else None,
            s.labels if labels else None,
        )
        for s in specs
    ]
    check_host(db, host)
    url, conn = open_db(db)
    with conn:
        enrolled = store_principals.enrol_node(conn, name, nodes)
    write_file(enrolled, url, db, host, out)


def _enrol_cmd(kind: str, verb: str) -> click.Command:
    """`flpg KIND VERB NAME`: a login role in flpg_KIND and its credential file."""

    @click.command(
        verb,
        help=f"{'Enrol' if verb == 'enroll' else 'Add'} {kind} NAME (admin): a login role in "
        f"flpg_{kind} and its credential file.",
    )
    @click.argument("name", callback=_name)
    @out_option
    @host_option
    @db_option
    @handle_errors
    def command(name: str, out: Path | None, host: str | None, db: str | None) -> None:
        from flpg.store import principals as store_principals

        db = _group_db(db)
        check_host(db, host)
        url, conn = open_db(db)
        with conn:
            enrolled = store_principals.enrol(conn, kind, name)
        write_file(enrolled, url, db, host, out)

    return command


def _revoke_cmd(kind: str) -> click.Command:
    """`flpg KIND revoke NAME`: no more logins, sessions ended, role dropped."""
    more = ""
    if kind == "node":
        more = "; mark its node ids offline and answer their undelivered instructions"
    doc = f"Revoke {kind} NAME (admin): end its sessions and drop its role{more}."

    @click.command("revoke", help=doc)
    @click.argument("name", callback=_name)
    @db_option
    @handle_errors
    def command(name: str, db: str | None) -> None:
        from flpg.store import principals as store_principals

        _, conn = open_db(_group_db(db))
        with conn:
            revoked = store_principals.revoke(conn, kind, name)
        ids = revoked.node_names
        served = f" (node ids {', '.join(ids)})" if len(ids) > 1 else ""
        failed = f"; {revoked.answered} undelivered instruction(s) failed" if kind == "node" else ""
        click.echo(f"{kind} {name!r}: role {revoked.role}{served} dropped{failed}")

    return command


@click.group("user")
def user_group() -> None:
    """Users (admin): `flpg user add NAME`, `flpg user revoke NAME`."""


@click.group("auditor")
def auditor_group() -> None:
    """Auditors (admin): `flpg auditor add NAME`, `flpg auditor revoke NAME`; an
    auditor reads every table's metadata and the audit views, and writes nothing."""


for _group, _kind in ((user_group, "user"), (auditor_group, "auditor")):
    _group.add_command(_enrol_cmd(_kind, "add"))
    _group.add_command(_revoke_cmd(_kind))

NODE_SUBCOMMANDS = (node_enroll_cmd, _revoke_cmd("node"))
"""The subcommands of `flpg node` (the worker group in `flpg.cli.workers`)."""
LINK_SUBCOMMANDS = (_enrol_cmd("link", "enroll"), _revoke_cmd("link"))
"""The subcommands of `flpg link`."""
EXEC_SUBCOMMANDS = (_enrol_cmd("exec", "enroll"), _revoke_cmd("exec"))
"""The subcommands of `flpg exec`."""

COMMANDS = (user_group, auditor_group)
"""The commands this module adds to `flpg`."""
