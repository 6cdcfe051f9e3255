"""A run's artifact directory (`flpg.exec.artifacts`): where it is, its modes, and
what `--app-user` requires of the directories around it."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flpg.bundle.appuser import AppUser
from flpg.exec import artifacts

OTHER = AppUser("flpg-test-nobody", 65534, 65534)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory of root's (0755) that every user may enter (pytest's own 0700
    base directory is out of another user's reach)."""
    path = Path(tempfile.mkdtemp(prefix="flpg-artifacts-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_directory_is_under_the_flpg_home_or_the_runs_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(artifacts.RUNS_DIR_ENV, raising=False)
    monkeypatch.setenv("FLPG_HOME", str(tmp_path / "home"))
    assert artifacts.run_dir(7) == tmp_path / "home" / "runs" / "7"
    made = artifacts.prepare(7)
    assert made == tmp_path / "home" / "runs" / "7" and made.is_dir()
    assert (mode(made), mode(made.parent)) == (0o700, 0o700)
    (made / "kept.txt").write_text("x")
    assert artifacts.prepare(7) == made and (made / "kept.txt").read_text() == "x"
    monkeypatch.setenv(artifacts.RUNS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert artifacts.prepare(8) == tmp_path / "elsewhere" / "8"
    assert artifacts.event(2, made).startswith("artifacts of attempt 2: ")
    assert artifacts.event(2, made).endswith(f":{made}")


def test_a_planted_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.RUNS_DIR_ENV, str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    (tmp_path / "target").mkdir()
    (tmp_path / "runs" / "3").symlink_to(tmp_path / "target")
    with pytest.raises(PermissionError, match=r"runs/3 is not a directory"):
        artifacts.prepare(3)


@needs_root
def test_with_an_app_user_the_run_is_its_and_the_runs_dir_roots(
    reachable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(artifacts.RUNS_DIR_ENV, str(reachable / "runs"))
    made = artifacts.prepare(5, OTHER)
    st = made.lstat()
    assert (st.st_uid, st.st_gid, mode(made)) == (OTHER.uid, OTHER.gid, 0o700)
    assert (made.parent.lstat().st_uid, mode(made.parent)) == (0, 0o711)


@needs_root
def test_an_app_user_needs_a_guarded_reachable_runs_dir(
    reachable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = reachable / "runs"
    monkeypatch.setenv(artifacts.RUNS_DIR_ENV, str(runs))
    runs.mkdir(mode=0o777)
    os.chmod(runs, 0o777)
    with pytest.raises(PermissionError, match="must be a directory of root's that no other"):
        artifacts.prepare(5, OTHER)
    os.chmod(runs, 0o711)
    os.chmod(reachable, 0o700)
    with pytest.raises(PermissionError, match=f"cannot enter {reachable} "):
        artifacts.prepare(5, OTHER)
    assert not (runs / "5").exists()
