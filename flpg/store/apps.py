"""App bundles."""

from __future__ import annotations

from flpg.errors import NotFound
from flpg.store._exec import one
from flpg.store.db import Connection


def get(conn: Connection, hash: str) -> tuple[str, bytes]:
    """`(name, bundle)` of the app with this hash; NotFound if absent."""
    row = one(conn, "apps_get", {"hash": hash})
    if row is None:
        raise NotFound(f"app bundle {hash[:12]} is not in the database")
    return str(row["name"]), bytes(row["bundle"])
