"""The private PostgreSQL cluster of one invocation, one scratch database per
configuration.

flpg's own `flpg.local.cluster.Cluster` initialises and starts the cluster in the
invocation's temporary directory (unix socket only, default server settings), so
flpg and the floor use the same server. Each configuration gets a fresh database,
dropped afterwards (`DROP DATABASE ... WITH (FORCE)`), so no run sees another's rows
and disk use stays bounded by the largest configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg import sql

from flpg.local.cluster import Cluster

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BenchCluster:
    """A started cluster under `root`; `destroy()` stops it and removes its files.

    `max_connections`, when given, replaces flpg's own setting (`ALTER SYSTEM`, then a
    restart): each flpg node holds several connections (worker and ClientApp process),
    so N=64 needs more than the embedded cluster's default."""

    def __init__(self, root: Path, max_connections: int | None = None) -> None:
        self.cluster = Cluster(root)
        self.admin_url = self.cluster.ensure_running()
        if max_connections is not None:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET max_connections = {}").format(
                        sql.Literal(max_connections)
                    )
                )
            self.cluster.stop()
            self.admin_url = self.cluster.ensure_running()

    def setting(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
        return str(row[0]) if row else "?"

    def create_database(self, name: str) -> str:
        """Create database `name` (dropping an old one of that name); its URL."""
        if not _NAME.match(name):
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.cluster.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute("CHECKPOINT")  # let the server recycle the WAL the run wrote

    def postmaster_pid(self) -> list[int]:
        """The server's main process (its backends are its children), or none."""
        try:
            first = (self.cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return [int(first)]
        except (OSError, ValueError):
            return []

    def server_version(self) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def destroy(self) -> None:
        self.cluster.destroy()
