"""Helpers for tests that serve a cluster of their own over TCP and drive the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flpg_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `flpg ARGS` as a process with FLPG_HOME=`home` and no FLPG_DATABASE_URL."""
    env = {**os.environ, "FLPG_HOME": str(home)}
    env.pop("FLPG_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "flpg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
