"""Run roles: the credential a run's ServerApp (per launch) and ClientApp processes
(per run and node worker) connect with, instead of their exec's or node's.

The roles are made and dropped by SECURITY DEFINER functions that check who calls
them (sql/security/runroles.v1.sql): an exec asks for ServerApp roles, a node for
ClientApp roles of its own node ids, the link collects the roles of ended runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from flpg.errors import InvalidState
from flpg.store._exec import one
from flpg.store.credentials import login_params, role_url
from flpg.store.db import TRANSIENT, Connection
from flpg.store.errors import translate

COLLECT_GRACE = 60.0
"""Seconds after its run ended before the link drops a run role its launcher left."""


@dataclass(frozen=True)
class RunLogin:
    """A run role's name and password (shown once)."""

    role: str
    password: str

    def url(self, base_url: str) -> str:
        """`base_url` (host, port, database, TLS settings) with this role's login."""
        return role_url(login_params(base_url), self.role, self.password)


@contextmanager
def _refusals() -> Iterator[None]:
    """The functions' refusals as FlpgErrors: a run that is not live, InvalidState;
    a caller not allowed, PermissionDenied (lost connections stay as they are)."""
    try:
        yield
    except psycopg.Error as exc:
        if exc.sqlstate == "55000":  # (psycopg counts class 55 as an OperationalError)
            raise InvalidState(exc.diag.message_primary or str(exc)) from exc
        if isinstance(exc, TRANSIENT):
            raise
        raise translate(exc) from exc


def _row(found: dict[str, Any] | None) -> dict[str, Any]:
    assert found is not None  # each function returns one row
    return found


def _login(found: dict[str, Any]) -> RunLogin:
    return RunLogin(str(found["role_name"]), str(found["password"]))


def serverapp_login(conn: Connection, run_id: int) -> RunLogin:
    """A new ServerApp role bound to run `run_id` (InvalidState unless the run is
    starting or running)."""
    with _refusals():
        return _login(_row(one(conn, "run_roles_serverapp_login", {"run_id": run_id})))


def clientapp_login(conn: Connection, run_id: int, node_ids: list[int]) -> RunLogin:
    """A new ClientApp role bound to run `run_id` and those of `node_ids` it selected
    (InvalidState if none, or the run ended)."""
    params = {"run_id": run_id, "node_ids": node_ids}
    with _refusals():
        return _login(_row(one(conn, "run_roles_clientapp_login", params)))


def drop(conn: Connection, role: str) -> bool:
    """Drop run role `role` (its sessions end); False if it was gone already."""
    with _refusals():
        return bool(_row(one(conn, "run_roles_drop", {"role_name": role}))["dropped"])


def drop_made_for(conn: Connection, role: str) -> int:
    """Admin: drop the live run roles made for login role `role` (a node or exec
    being revoked); how many."""
    with _refusals():
        return int(_row(one(conn, "run_roles_drop_made_for", {"role_name": role}))["dropped"])


def collect(conn: Connection, grace: float = COLLECT_GRACE) -> int:
    """Drop the run roles of runs that ended `grace` s ago or more; how many."""
    with _refusals():
        return int(_row(one(conn, "run_roles_collect", {"grace": grace}))["dropped"])
