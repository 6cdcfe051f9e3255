"""Enrolment and revocation: login roles for nodes and users, and their mapping.

Admin only (the role that owns the tables and may create roles). Each enrolled
participant gets a login role of its own, a member of its group role (`flpg_node`,
`flpg_user`), with a fresh random password, and a `principals` row (plus
`principal_nodes` for a node) that the row-level security policies read. Role DDL
is built with quoted identifiers and literals (psycopg.sql), never by pasting text.

Role names are `flpg_node_<slug>_<hash>` / `flpg_user_<slug>_<hash>`: the slug is
the name lower-cased with other characters as `_` (cut short), the hash is taken
over the database's and the participant's names, so two flpg databases on one
cluster (roles are cluster-wide) never collide and a name maps to one role.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg.conninfo
from psycopg import sql as pgsql

from flpg.app.message import ErrorCode
from flpg.errors import InvalidState, NotFound
from flpg.store import messages as store_messages
from flpg.store import nodes as store_nodes
from flpg.store._exec import one, rows, run
from flpg.store.db import Connection

GROUPS = {"node": "flpg_node", "user": "flpg_user"}
"""The kinds this module enrols, and their group roles."""

_SLUG_MAX = 32


@dataclass(frozen=True)
class Enrolled:
    """A new login role: its name, password (shown once, in the credential file),
    kind, and the node (name, id) or user name it stands for."""

    role: str
    password: str
    kind: str
    name: str
    node_id: int | None = None


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


def enrol_node(conn: Connection, name: str) -> Enrolled:
    """Create the login role of node `name` (IN ROLE flpg_node), adopt its node row
    (or create it, offline) and map the role to it, in one transaction.
    InvalidState if the node is already enrolled (nothing changes)."""
    with conn.transaction():
        found = one(conn, "principals_find_node", {"name": name})
        role = role_name(conn, "node", name)
        if found is not None or _role_exists(conn, role):
            held = found["role_name"] if found is not None else role
            raise InvalidState(
                f"node {name!r} is already enrolled (role {held}); "
                f"revoke it first with `flpg node revoke {name}`"
            )
        password = _create_role(conn, role, "node")
        run(conn, "principals_insert", {"role_name": role, "kind": "node", "user_name": None})
        mapped = one(conn, "principal_nodes_enrol", {"role_name": role, "name": name})
    assert mapped is not None
    return Enrolled(role, password, "node", name, int(mapped["node_id"]))


def add_user(conn: Connection, name: str) -> Enrolled:
    """Create the login role of user `name` (IN ROLE flpg_user) and its principals
    row, in one transaction. InvalidState if the user already has one."""
    with conn.transaction():
        role = role_name(conn, "user", name)
        found = one(conn, "principals_find_user", {"name": name})
        if found is not None or _role_exists(conn, role):
            raise InvalidState(f"user {name!r} already exists (role {role})")
        password = _create_role(conn, role, "user")
        run(conn, "principals_insert", {"role_name": role, "kind": "user", "user_name": name})
    return Enrolled(role, password, "user", name)


def revoke_node(conn: Connection, name: str) -> tuple[str, int]:
    """Revoke node `name`: its role can no longer log in, its sessions end, its
    mapping goes, the node is marked offline and its undelivered instructions are
    answered at once with error replies (NODE_UNAVAILABLE); then the role is dropped.
    Returns (role, instructions answered). NotFound if the node is not enrolled."""
    found = one(conn, "principals_find_node", {"name": name})
    if found is None:
        raise NotFound(f"node {name!r} is not enrolled (see `flpg nodes`)")
    role, node_id = str(found["role_name"]), int(found["node_id"])
    ident = pgsql.Identifier(role)
    # First no new logins (committed), then end the sessions already open.
    conn.execute(pgsql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
    run(conn, "principals_terminate_sessions", {"role_name": role})
    with conn.transaction():
        run(conn, "principals_delete", {"role_name": role})
        store_nodes.set_offline(conn, [node_id])
        answered = store_messages.fail_offline(conn, [node_id], ErrorCode.NODE_UNAVAILABLE)
        conn.execute(pgsql.SQL("DROP ROLE {}").format(ident))
    return role, answered


def list_all(conn: Connection) -> list[Principal]:
    """Every principal, by kind and role name."""
    return [Principal(**r) for r in rows(conn, "principals_list")]


def login_params(admin_url: str) -> dict[str, Any]:
    """The connection parameters of `admin_url` (URL or key=value string), without
    its user and password: what a role's credential starts from."""
    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(admin_url)
    for key in ("user", "password", "passfile"):
        params.pop(key, None)
    return params
