"""The PostgreSQL server binaries the db, e2e and faults tests need."""

from __future__ import annotations

from pathlib import Path

import pytest

from flpg.errors import EmbeddedDatabaseError
from flpg.local.binaries import find_bindir

MISSING_BINARIES = (
    "the db, e2e and faults tests need the PostgreSQL server binaries; the unit tests "
    "(pytest tests/unit) run without them. {}"
)


def require_bindir() -> Path:
    """The server binaries' directory; without them the calling test fails with one line
    naming what to install (it is not skipped: a missing feature must not pass)."""
    try:
        return find_bindir()
    except EmbeddedDatabaseError as exc:
        pytest.fail(MISSING_BINARIES.format(exc), pytrace=False)
