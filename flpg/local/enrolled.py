"""The local federation's own credentials: `flpg up` starts its link, exec and node
workers as enrolled roles, as a federation across machines does, so the secure path
is the one used every day.

Each worker's credential file is `<flpg home>/credentials/<name>.json` (mode 0600,
in a 0700 directory). A file is reused while its login still works and, for a node,
its node config is still the one wanted; otherwise the participant is revoked (if
enrolled) and enrolled afresh. Workers get only their file, never admin's URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flpg.errors import FlpgError
from flpg.store import nodes as store_nodes
from flpg.store import principals as store_principals
from flpg.store.credentials import (
    Credentials,
    load_credentials,
    login_params,
    role_url,
    write_credentials,
)
from flpg.store.db import Connection, connect
from flpg.store.principals import Enrolled, NodeSettings


def credentials_dir(home: Path) -> Path:
    """Where the local federation keeps its workers' credential files (mode 0700)."""
    path = home / "credentials"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def ensure(
    conn: Connection,
    admin_url: str,
    home: Path,
    kind: str,
    name: str,
    node_config: dict[str, Any] | None = None,
) -> Path:
    """The credential file of local worker `name` of `kind` (link, exec, node), made
    (or made again) if it cannot be used as it is; `conn` is admin's."""
    path = credentials_dir(home) / f"{name}.json"
    if path.exists() and _usable(conn, path, kind, name, node_config):
        return path
    if _enrolled(conn, kind, name):
        store_principals.revoke(conn, kind, name)
    if kind == "node":
        enrolled = store_principals.enrol_node(
            conn, name, [NodeSettings(name, node_config=node_config or {}, labels={})]
        )
    else:
        enrolled = store_principals.enrol(conn, kind, name)
    _write(path, admin_url, enrolled)
    return path


def _usable(
    conn: Connection, path: Path, kind: str, name: str, node_config: dict[str, Any] | None
) -> bool:
    try:
        connect(load_credentials(path), application_name="flpg-up").close()
    except FlpgError:
        return False
    found = store_principals.list_all(conn)
    role = next((p for p in found if p.kind == kind and name in (p.user_name, *p.node_names)), None)
    if role is None:
        return False
    if kind != "node":
        return True
    node = next((n for n in store_nodes.list_all(conn) if n.name == name), None)
    return node is not None and dict(node.node_config) == (node_config or {})


def _enrolled(conn: Connection, kind: str, name: str) -> bool:
    return any(
        p.kind == kind and name in (p.user_name, *p.node_names)
        for p in store_principals.list_all(conn)
    )


def _write(path: Path, admin_url: str, enrolled: Enrolled) -> None:
    params = login_params(admin_url)
    write_credentials(
        path,
        Credentials(
            url=role_url(params, enrolled.role, enrolled.password),
            role=enrolled.role,
            kind=enrolled.kind,
            node=enrolled.name if enrolled.kind == "node" else None,
        ),
    )
