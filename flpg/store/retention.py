"""Retention (`flpg gc`, admin): free the payload chunks of runs that ended long ago.

Only chunk rows are deleted (`arrays_collect_retired`); runs, messages, `arrays`
rows (dtype, shape, digest), logs and metrics stay, and so does each run's final
model (its checkpoint's arrays) unless asked otherwise. A run that has not ended,
or ended less than `older_than` ago, or is among the `keep_last` most recently
ended runs, is never touched. Also: the database's size by table (`flpg db status`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flpg.errors import PermissionDenied
from flpg.store._exec import one, rows
from flpg.store.db import Connection

BATCH = 500
"""Arrays whose chunks one transaction deletes (short transactions, short locks)."""


@dataclass
class GcResult:
    """What `collect_retired` freed (or, dry, would free) and what it left alone."""

    arrays: int = 0
    chunks: int = 0
    bytes: int = 0
    run_ids: set[int] = field(default_factory=set)
    """The runs at least one of whose arrays was collected."""
    active: int = 0
    """Runs skipped because they have not ended."""
    recent: int = 0
    """Runs skipped because they ended less than `older_than` ago."""
    kept: int = 0
    """Runs old enough but kept by `keep_last`."""


def collect_retired(
    conn: Connection,
    *,
    older_than: float,
    keep_last: int = 0,
    keep_model: bool = True,
    dry_run: bool = False,
    batch: int = BATCH,
) -> GcResult:
    """Delete the chunks of the arrays of runs that ended `older_than` seconds ago or
    more, other than the `keep_last` most recently ended, in transactions of at most
    `batch` arrays; with `keep_model`, checkpoint arrays are kept. `dry_run`: change
    nothing, return the same numbers (one statement). The skip counts are those seen
    by the first transaction. Raises PermissionDenied (nothing changed) unless the
    role is admin; ValueError on a negative `older_than` or `keep_last`."""
    if older_than < 0 or keep_last < 0 or batch < 1:
        raise ValueError("older_than and keep_last must be >= 0, batch >= 1")
    params = {
        "older_than": older_than,
        "keep_last": keep_last,
        "keep_model": keep_model,
        "dry_run": dry_run,
        "limit": None if dry_run else batch,
    }
    result: GcResult | None = None
    while True:
        with conn.transaction():
            row = one(conn, "arrays_collect_retired", params)
        assert row is not None
        if not row["admin"]:
            raise PermissionDenied(
                f"`flpg gc` needs admin (the role that owns flpg's tables); role "
                f"{conn.info.user!r} is not; nothing was changed"
            )
        if result is None:
            result = GcResult(active=row["active"], recent=row["recent"], kept=row["kept"])
        result.arrays += row["arrays"]
        result.chunks += row["chunks"]
        result.bytes += row["bytes"]
        result.run_ids.update(row["run_ids"])
        if dry_run or row["arrays"] < batch:
            return result


@dataclass(frozen=True)
class TableSize:
    name: str
    bytes: int


def table_sizes(conn: Connection, limit: int = 8) -> tuple[int | None, list[TableSize]]:
    """The database's size in bytes (None if it has no table) and its `limit`
    largest tables by total relation size (heap, TOAST, indexes), largest first."""
    found = rows(conn, "schema_list_table_sizes", {"limit": limit})
    total = int(found[0]["database_bytes"]) if found else None
    return total, [TableSize(r["name"], int(r["bytes"])) for r in found]
