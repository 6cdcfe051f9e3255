"""Fault-injection tests: a federation of real flpg processes per test (the e2e
`federation` fixture and its teardown checks), faults injected with signals; and a
private PostgreSQL cluster for the tests that stop and restart the database."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flpg.local.cluster import Cluster
from tests.e2e.conftest import federation, pytest_runtest_makereport

__all__ = ["federation", "private_cluster", "pytest_runtest_makereport"]


@pytest.fixture
def private_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own (so it may be stopped), destroyed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="flpg-fault-cluster-", dir="/tmp"))
    cluster = Cluster(root)
    try:
        cluster.ensure_running()
        yield cluster
    finally:
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(root, ignore_errors=True)
