"""Enrolment and revocation: login roles for nodes, users, links, execs and
auditors, and their mapping.

Admin only (the role that owns the tables and may create roles). Each enrolled
participant gets a login role of its own, a member of its group role (`flpg_node`,
`flpg_user`, `flpg_link`, `flpg_exec`, `flpg_auditor`), with a fresh random
password, and a `principals` row (plus `principal_nodes` for a node) that the
row-level security policies read. Role DDL is built with quoted identifiers and
literals (psycopg.sql), never by pasting text.

Role names are `flpg_<kind>_<slug>_<hash>`: the slug is the name lower-cased with
other characters as `_` (cut short), the hash is taken over the database's name,
the kind and the participant's name, so two flpg databases on one cluster (roles
are cluster-wide) never collide and a name maps to one role.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from flpg.app.message import ErrorCode
from flpg.errors import ConfigError, InvalidState, NotFound
from flpg.models import PRINCIPAL_KINDS
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store import runroles as store_runroles
from flpg.store._exec import one, rows, run
from flpg.store.db import Connection

GROUPS = {kind: f"flpg_{kind}" for kind in PRINCIPAL_KINDS}
"""Every kind of principal, and its group role."""

BY_NAME = ("user", "link", "exec", "auditor")
"""The kinds `enrol` makes: one login role per name, no node ids; the name is kept
in `principals.user_name`."""

_SLUG_MAX = 32


@dataclass(frozen=True)
class NodeSettings:
    """A node id to enrol: its name, and the node config and labels admin sets for
    it (None: a new row gets none, an adopted row keeps its own)."""

    name: str
    node_config: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None


@dataclass(frozen=True)
class Enrolled:
    """A new login role: its name, password (shown once, in the credential file),
    kind, the name it was enrolled under and, for a node, its node ids."""

    role: str
    password: str
    kind: str
    name: str
    node_ids: tuple[int, ...] = ()

    @property
    def node_id(self) -> int | None:
        """The (first) node id of a node role, else None."""
        return self.node_ids[0] if self.node_ids else None


@dataclass(frozen=True)
class Revoked:
    """A dropped role, the node names it answered for, the instructions answered."""

    role: str
    node_names: tuple[str, ...] = ()
    answered: int = 0


@dataclass(frozen=True)
class Principal:
    """One row of `principals`, with the names of the nodes it answers for."""

    role_name: str
    kind: str
    user_name: str | None
    run_id: int | None
    created_at: datetime
    node_names: list[str]


def role_name(conn: Connection, kind: str, name: str) -> str:
    """The login role name of `kind` participant `name` in this database."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:_SLUG_MAX] or "x"
    database = conn.info.dbname
    digest = hashlib.sha256(f"{database}\0{kind}\0{name}".encode()).hexdigest()[:10]
    return f"flpg_{kind}_{slug}_{digest}"


def _create_role(conn: Connection, role: str, kind: str) -> str:
    password = secrets.token_urlsafe(32)
    conn.execute(
        pgsql.SQL(
            "CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE"
            " NOREPLICATION NOBYPASSRLS IN ROLE {}"
        ).format(pgsql.Identifier(role), pgsql.Literal(password), pgsql.Identifier(GROUPS[kind]))
    )
    return password


def _role_exists(conn: Connection, role: str) -> bool:
    return one(conn, "principals_role_exists", {"role_name": role}) is not None


def _find(conn: Connection, kind: str, name: str) -> dict[str, Any] | None:
    """The principal of `kind` participant `name` (see `principals_find`), if any."""
    params = {"kind": kind, "name": name, "role_name": role_name(conn, kind, name)}
    return one(conn, "principals_find", params)


def enrol_node(conn: Connection, name: str, nodes: Sequence[NodeSettings] = ()) -> Enrolled:
    """Create the login role of node `name` (IN ROLE flpg_node), adopt or create
    (offline) the node rows of `nodes` (default: one node id named `name`, settings
    untouched), set the settings given and map the role to them, in one transaction.
    InvalidState if `name` or one of the node names is already enrolled (nothing
    changes)."""
    nodes = list(nodes) or [NodeSettings(name)]
    if len({n.name for n in nodes}) != len(nodes):
        raise ConfigError(f"node {name!r}: a node name is given twice")
    with conn.transaction():
        role = role_name(conn, "node", name)
        for node in [NodeSettings(name), *nodes]:
            found = _find(conn, "node", node.name)
            if found is not None or _role_exists(conn, role):
                held = found["role_name"] if found is not None else role
                raise InvalidState(
                    f"node {node.name!r} is already enrolled (role {held}); "
                    f"revoke it first with `flpg node revoke {node.name}`"
                )
        password = _create_role(conn, role, "node")
        run(conn, "principals_insert", {"role_name": role, "kind": "node", "user_name": None})
        node_ids = tuple(_map_node(conn, role, node) for node in nodes)
    return Enrolled(role, password, "node", name, node_ids)


def _map_node(conn: Connection, role: str, node: NodeSettings) -> int:
    def jsonb(value: dict[str, Any] | None) -> Jsonb | None:
        return None if value is None else Jsonb(value)

    params = {
        "role_name": role,
        "name": node.name,
        "node_config": jsonb(node.node_config),
        "labels": jsonb(node.labels),
    }
    mapped = one(conn, "principal_nodes_enrol", params)
    assert mapped is not None
    return int(mapped["node_id"])


def enrol(conn: Connection, kind: str, name: str) -> Enrolled:
    """Create the login role of `kind` participant `name` (a user, link, exec or
    auditor: `BY_NAME`), IN ROLE flpg_<kind>, and its principals row, in one
    transaction. InvalidState if it already has one (nothing changes)."""
    if kind not in BY_NAME:
        raise ValueError(f"enrol makes {', '.join(BY_NAME)} roles, not {kind!r}")
    with conn.transaction():
        role = role_name(conn, kind, name)
        found = _find(conn, kind, name)
        if found is not None or _role_exists(conn, role):
            held = found["role_name"] if found is not None else role
            raise InvalidState(
                f"{kind} {name!r} already exists (role {held}); "
                f"revoke it first with `flpg {kind} revoke {name}`"
            )
        password = _create_role(conn, role, kind)
        run(conn, "principals_insert", {"role_name": role, "kind": kind, "user_name": name})
    return Enrolled(role, password, kind, name)


def revoke(conn: Connection, kind: str, name: str) -> Revoked:
    """Revoke `kind` participant `name`: its role can no longer log in, its sessions
    end, the run roles made for it (a node's ClientApps, an exec's ServerApps) are
    dropped, its mapping goes; a node role's node ids (all of them, for one enrolled
    with --virtual) are marked offline and their undelivered instructions answered
    at once with error replies (NODE_UNAVAILABLE); then the role is dropped.
    NotFound if `name` is not enrolled as `kind`."""
    found = _find(conn, kind, name)
    if found is None:
        where = " (see `flpg nodes`)" if kind == "node" else ""
        raise NotFound(f"{kind} {name!r} is not enrolled{where}")
    role = str(found["role_name"])
    node_ids = [int(i) for i in found["node_ids"]]
    ident = pgsql.Identifier(role)
    # First no new logins (committed), then end the sessions already open.
    conn.execute(pgsql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
    run(conn, "principals_terminate_sessions", {"role_name": role})
    answered = 0
    # The run roles made for it go too: its app processes lose their credentials.
    store_runroles.drop_made_for(conn, role)
    with conn.transaction():
        run(conn, "principals_delete", {"role_name": role})
        if node_ids:
            store_nodes.set_offline(conn, node_ids)
            answered = store_messages.fail_offline(conn, node_ids, ErrorCode.NODE_UNAVAILABLE)
        conn.execute(pgsql.SQL("DROP ROLE {}").format(ident))
    return Revoked(role, tuple(found["node_names"]), answered)


def list_all(conn: Connection) -> list[Principal]:
    """Every principal, by kind and role name."""
    return [Principal(**r) for r in rows(conn, "principals_list")]
