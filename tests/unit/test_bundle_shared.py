"""A bundle cache read by app processes of another OS user (`--app-user`): explicit
modes, entries others could write are not intact, `verified` reads without writing;
and the run role URL such a process gets (`flpg.bundle.appuser`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flpg.bundle.appdir import bundle
from flpg.bundle.appuser import _confined_url
from flpg.bundle.cache import BundleCache
from flpg.errors import AppError

APPS = Path(__file__).resolve().parents[1] / "e2e" / "apps"


@pytest.fixture
def app_bundle() -> tuple[str, bytes]:
    return bundle(APPS / "deterministic")


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave extracted files group- and world-writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> set[tuple[bool, int]]:
    return {(p.is_dir(), stat.S_IMODE(p.lstat().st_mode)) for p in [root, *root.rglob("*")]}


def test_a_shared_cache_is_0755_and_0644_whatever_the_umask(
    tmp_path: Path, app_bundle: tuple[str, bytes], loose_umask: None
) -> None:
    app_hash, data = app_bundle
    cache = BundleCache(tmp_path / "cache", shared=True)
    root = cache.path(app_hash, lambda: data)
    assert _modes(root) == {(True, 0o755), (False, 0o644)}
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "cache" / f"{app_hash}.zip").stat().st_mode) == 0o644
    cache.release(app_hash)


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o600])
def test_a_shared_copy_with_another_mode_is_extracted_again(
    tmp_path: Path, app_bundle: tuple[str, bytes], mode: int
) -> None:
    """Writable by others (USER could swap the bytes before an import), or not
    readable by them (USER could not load it)."""
    app_hash, data = app_bundle
    fetches = []

    def fetch() -> bytes:
        fetches.append(1)
        return data

    cache = BundleCache(tmp_path, shared=True)
    root = cache.path(app_hash, fetch)
    module = next(root.rglob("client_app.py"))
    module.chmod(mode)  # same bytes
    with pytest.raises(AppError, match="not intact"):
        BundleCache(tmp_path, shared=True).verified(app_hash)
    assert cache.path(app_hash, fetch) == root
    assert len(fetches) == 2
    assert stat.S_IMODE(module.stat().st_mode) == 0o644
    cache.release(app_hash)


def test_verified_reads_the_copy_and_writes_nothing(
    tmp_path: Path, app_bundle: tuple[str, bytes]
) -> None:
    app_hash, data = app_bundle
    reader = BundleCache(tmp_path / "cache", shared=True)
    with pytest.raises(AppError, match="missing or not intact in the read-only app cache"):
        reader.verified(app_hash)
    assert not (tmp_path / "cache").exists()  # no directory, no lock file made
    writer = BundleCache(tmp_path / "cache", shared=True)
    root = writer.path(app_hash, lambda: data)
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert reader.verified(app_hash) == root
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before
    (root / "pyproject.toml").write_text("tampered")
    with pytest.raises(AppError, match="not intact"):
        reader.verified(app_hash)
    with pytest.raises(AppError, match="not a SHA-256"):
        reader.verified("../../etc")
    writer.release(app_hash)


def test_the_url_of_an_app_process_has_its_own_copy_of_the_ca_and_no_client_key(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "worker" / "cred.json.ca.crt"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    home = tmp_path / "home"
    home.mkdir()
    url = (
        "postgresql://flpg_run_x:s3cret@db.example.org:5433/flpg?sslmode=verify-full"
        f"&sslrootcert={ca}&sslcert=/root/client.crt&sslkey=/root/client.key"
    )
    params = psycopg.conninfo.conninfo_to_dict(_confined_url(url, home, source={}))
    copy = home / ".postgresql" / "root.crt"
    assert params == {
        "user": "flpg_run_x",
        "password": "s3cret",
        "host": "db.example.org",
        "port": "5433",
        "dbname": "flpg",
        "sslmode": "verify-full",
        "sslrootcert": str(copy),
    }
    assert copy.read_text() == ca.read_text()
    # From the worker's environment when the URL names none; "system" is kept as is.
    (home / "x").mkdir()
    params = psycopg.conninfo.conninfo_to_dict(
        _confined_url("postgresql://u:p@h/d", home / "x", source={"PGSSLROOTCERT": str(ca)})
    )
    assert params["sslrootcert"] == str(home / "x" / ".postgresql" / "root.crt")
    system = _confined_url("postgresql://u:p@h/d?sslrootcert=system", home, source={})
    assert psycopg.conninfo.conninfo_to_dict(system)["sslrootcert"] == "system"
