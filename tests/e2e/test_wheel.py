"""The wheel is complete: built, installed into a fresh venv (no site packages, no
source checkout in reach), its `flpg db upgrade` creates the schema from the SQL and
migrations shipped inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str]) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (
        f"$ {' '.join(argv)}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def clean_env() -> dict[str, str]:
    """The environment without anything that points at the checkout or a database."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FLPG_")}


def test_wheel_ships_sql_and_migrations(tmp_path: Path, empty_db_url: str) -> None:
    env = clean_env()
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(ROOT),
        ],
        cwd=tmp_path,
        timeout=180,
        env=env,
    )
    wheels = list(dist.glob("flpg-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    wheel = wheels[0]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for required in (
        "flpg/_data/sql/messages.sql",
        "flpg/_data/sql/views/run_history.v1.sql",
        "flpg/_data/migrations/env.py",
        "flpg/_data/migrations/script.py.mako",
        "flpg/cli/__init__.py",
        "flpg/cli/__main__.py",
        "flpg/_data/sql/ui.sql",
        # The dashboard's pages and its chart library travel inside the package (no CDN).
        "flpg/ui/app.py",
        "flpg/ui/templates/layout.html",
        "flpg/ui/templates/run.html",
        "flpg/ui/static/dashboard.js",
        "flpg/ui/static/dashboard.css",
        "flpg/ui/static/uPlot.iife.min.js",
        "flpg/ui/static/uPlot.min.css",
        "flpg/ui/static/uPlot.LICENSE",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert any(n.startswith("flpg/_data/migrations/versions/") for n in names)
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120, env=env)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    python = venv / "bin" / "python"
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            str(wheel),
        ],
        cwd=tmp_path,
        timeout=300,
        env=env,
    )

    # The installed flpg is the wheel's, and finds its data inside the package.
    where = run(
        [
            str(python),
            "-c",
            "import flpg, flpg.store.resources as r; print(flpg.__file__); print(r.sql_dir()); "
            "print(r.migrations_dir())",
        ],
        cwd=tmp_path,
        timeout=60,
        env=env,
    ).split()
    site = str(venv / "lib")
    assert all(p.startswith(site) for p in where), where
    assert where[1].endswith("flpg/_data/sql") and where[2].endswith("flpg/_data/migrations")

    out = run(
        [str(venv / "bin" / "flpg"), "db", "upgrade", "--db", empty_db_url],
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert "(was empty)" in out, out

    with psycopg.connect(empty_db_url) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        views = {
            r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
        }
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {
        "apps",
        "nodes",
        "runs",
        "run_nodes",
        "messages",
        "message_arrays",
        "arrays",
        "array_chunks",
        "run_logs",
        "round_metrics",
        "alembic_version",
    } <= tables
    assert {"run_history", "round_history", "message_latency", "node_participation"} <= views
    assert revision is not None

    # Idempotent, and the rest of the installed CLI works against it.
    again = run(
        [str(venv / "bin" / "flpg"), "db", "upgrade", "--db", empty_db_url],
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert f"(was {revision[0]})" in again
    listed = run(
        [str(venv / "bin" / "flpg"), "ls", "--format", "json", "--db", empty_db_url],
        cwd=tmp_path,
        timeout=60,
        env=env,
    )
    assert listed.strip() == "[]"

    # Without the ui extra, `flpg ui` says in one line how to get it.
    no_extra = subprocess.run(
        [str(venv / "bin" / "flpg"), "ui", "--db", empty_db_url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert no_extra.returncode == 2, no_extra
    assert no_extra.stderr.count("\n") == 1 and "pip install 'flpg[ui]'" in no_extra.stderr
