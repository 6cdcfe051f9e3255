"""Zero set-up: the embedded default database, `flpg up`/`down`, `flpg new`, `flpg demo`.

These run the real `flpg` command with no `--db` and no FLPG_DATABASE_URL, each
against its own flpg home (and so its own embedded cluster).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flpg.store.migrate import head_revision
from tests.conftest import TEST_ENV

pytestmark = pytest.mark.e2e

FLPG = [sys.executable, "-m", "flpg.cli"]
REPO = Path(__file__).resolve().parents[2]


def flpg(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLPG, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def home_env() -> Iterator[dict[str, str]]:
    """An environment with a fresh flpg home and no database URL."""
    home = Path(tempfile.mkdtemp(prefix="flpg-home-", dir="/tmp"))
    home.chmod(0o755)  # the server account (when running as root) must enter it
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLPG_")}
    env.update(TEST_ENV)
    env["FLPG_HOME"] = str(home)
    env["FLPG_CACHE_DIR"] = str(home / "cache")
    try:
        yield env
    finally:
        flpg(env, "down")
        flpg(env, "db", "stop")
        subprocess.run(["rm", "-rf", str(home)], check=False)


def _postmaster_pid(home: str) -> int | None:
    pid_file = Path(home) / "postgres" / "data" / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def test_embedded_cluster_initialises_is_reused_and_survives_stop(home_env: dict[str, str]) -> None:
    status = flpg(home_env, "db", "status")
    assert status.returncode == 0, status.stderr
    assert "initialised: no" in status.stdout

    first = flpg(home_env, "nodes", "--format", "json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == []
    pid = _postmaster_pid(home_env["FLPG_HOME"])
    assert pid is not None and _alive(pid)

    second = flpg(home_env, "ls", "--format", "json")
    assert second.returncode == 0, second.stderr
    assert _postmaster_pid(home_env["FLPG_HOME"]) == pid  # reused, not restarted

    stopped = flpg(home_env, "db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not _alive(pid)

    again = flpg(home_env, "db", "upgrade")
    assert again.returncode == 0, again.stderr
    new_pid = _postmaster_pid(home_env["FLPG_HOME"])
    assert new_pid is not None and new_pid != pid and _alive(new_pid)
    status = flpg(home_env, "db", "status")
    assert "running: yes" in status.stdout and f"schema: {head_revision()}" in status.stdout


def test_embedded_cluster_refuses_without_server_binaries(home_env: dict[str, str]) -> None:
    env = dict(home_env)
    env["PATH"] = os.path.dirname(sys.executable)  # python only: no pg_ctl, no pg_config
    env["FLPG_PG_BINDIR"] = str(Path(env["FLPG_HOME"]) / "no-binaries-here")
    result = flpg(env, "ls")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "install" in lines[0] or "FLPG_PG_BINDIR" in lines[0]
    assert not (Path(env["FLPG_HOME"]) / "postgres" / "data").exists()


def test_up_run_new_app_and_down_leave_no_process(home_env: dict[str, str], tmp_path: Path) -> None:
    up = flpg(home_env, "up", "--nodes", "2")
    assert up.returncode == 0, up.stderr + up.stdout
    state = json.loads((Path(home_env["FLPG_HOME"]) / "federation.json").read_text())
    pids = [m["pid"] for m in state["members"]]
    assert len(pids) == 4 and all(_alive(p) for p in pids)

    again = flpg(home_env, "up", "--nodes", "2")  # idempotent
    assert again.returncode == 0 and "already up" in again.stdout
    assert [
        m["pid"]
        for m in json.loads((Path(home_env["FLPG_HOME"]) / "federation.json").read_text())[
            "members"
        ]
    ] == pids

    nodes = json.loads(flpg(home_env, "nodes", "--format", "json").stdout)
    assert sorted(n["node_config"]["partition-id"] for n in nodes) == [0, 1]
    _assert_workers_are_enrolled(home_env, pids)

    run = flpg(home_env, "run", "examples/quickstart-numpy", "--stream")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "finished" in run.stdout.splitlines()[-1]

    created = flpg(home_env, "new", "my-app", "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    new_run = flpg(home_env, "run", str(tmp_path / "my-app"), "--stream")
    assert new_run.returncode == 0, new_run.stdout + new_run.stderr

    db_pid = _postmaster_pid(home_env["FLPG_HOME"])
    down = flpg(home_env, "down")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in pids)
    assert db_pid is not None and not _alive(db_pid)  # `up` started it, so `down` stops it
    assert not (Path(home_env["FLPG_HOME"]) / "federation.json").exists()


def _admin_url(env: dict[str, str]) -> str:
    code = "from flpg.local.embedded import cluster; print(cluster().url())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _assert_workers_are_enrolled(env: dict[str, str], pids: list[int]) -> None:
    """`flpg up`'s workers hold only their own credential files (0600 in a 0700
    directory), never admin's URL, and connect as their own enrolled roles."""
    creds = Path(env["FLPG_HOME"]) / "credentials"
    assert creds.stat().st_mode & 0o777 == 0o700
    files = sorted(p.name for p in creds.glob("*.json"))
    assert files == ["exec.json", "link.json", "node-1.json", "node-2.json"]
    assert all((creds / f).stat().st_mode & 0o777 == 0o600 for f in files)
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith(b"FLPG_DATABASE_URL=") for v in environ)
        assert "--credentials" in Path(f"/proc/{pid}/cmdline").read_text()
    with psycopg.connect(_admin_url(env)) as conn:
        sessions = conn.execute(
            "SELECT a.application_name, p.kind FROM pg_stat_activity a"
            " JOIN principals p ON p.role_name = a.usename"
            " WHERE a.application_name IN ('flpg-link', 'flpg-exec', 'flpg-node')"
        ).fetchall()
    kinds = {app.removeprefix("flpg-"): kind for app, kind in sessions}
    assert kinds == {"link": "link", "exec": "exec", "node": "node"}, sessions


def test_demo_reaches_90_percent(home_env: dict[str, str]) -> None:
    pytest.importorskip("sklearn")
    result = flpg(home_env, "demo", "--nodes", "3", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"final test accuracy \(held-out set\): ([0-9.]+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) >= 0.90
    assert "round_history" in result.stdout  # the audit SQL is printed
    assert "local federation stopped" in result.stdout
    state = Path(home_env["FLPG_HOME"]) / "federation.json"
    assert not state.exists()
