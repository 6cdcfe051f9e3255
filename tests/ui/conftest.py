"""Fixtures of the dashboard tests: the e2e `federation` harness, `flpg ui` started as
a real process, and a directory for screenshots."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import federation, pytest_runtest_makereport
from tests.e2e.harness import Federation, HarnessError

__all__ = ["federation", "pytest_runtest_makereport"]

ARTIFACTS_ENV = "FLPG_TEST_ARTIFACTS"
"""Where the browser tests save their screenshots (default: the test's tmp_path)."""

_SERVING = re.compile(r"flpg ui: serving (?P<url>http://\S+/)")


def start_ui(fed: Federation, *args: str, name: str = "ui", timeout: float = 30) -> str:
    """Start `flpg ui --port 0 ARGS...` in `fed`; return the URL it serves once it says so."""
    proc = fed.start(name, "ui", "--port", "0", *args)
    deadline = time.monotonic() + timeout
    while True:
        found = _SERVING.search(proc.log())
        if found:
            return found["url"]
        if not proc.alive():
            raise HarnessError(f"flpg ui exited ({proc.popen.returncode}):\n{proc.log()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"flpg ui did not announce its URL in {timeout:g} s\n{proc.log()}")
        time.sleep(0.1)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A directory for this test's screenshots: $FLPG_TEST_ARTIFACTS/<test name>, or
    under tmp_path. Printed, so a run's output says where they are."""
    root = os.environ.get(ARTIFACTS_ENV)
    where = (Path(root) if root else tmp_path / "artifacts") / request.node.name
    where.mkdir(parents=True, exist_ok=True)
    print(f"screenshots of {request.node.nodeid}: {where}")
    return where
