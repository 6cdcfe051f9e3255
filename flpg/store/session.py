"""Settings of one database session, and the lock conflicts they may raise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from flpg.errors import Deadlock, LockTimeout
from flpg.store._exec import one
from flpg.store.db import Connection


def set_lock_timeout(conn: Connection, seconds: float) -> None:
    """From now on, a statement of this session that waits more than `seconds` on a
    lock fails; inside `lock_conflicts()` it raises LockTimeout."""
    one(conn, "session_set_lock_timeout", {"lock_timeout": f"{int(seconds * 1000)}ms"})


@contextmanager
def lock_conflicts() -> Iterator[None]:
    """Run the block; a statement in it that the database cancelled to break a
    deadlock raises Deadlock, one that ran out of lock timeout raises LockTimeout.
    Other errors pass through unchanged."""
    try:
        yield
    except psycopg.errors.DeadlockDetected as exc:
        raise Deadlock(f"deadlock: {exc.diag.message_primary}") from exc
    except psycopg.errors.LockNotAvailable as exc:
        raise LockTimeout(f"lock timeout: {exc.diag.message_primary}") from exc
