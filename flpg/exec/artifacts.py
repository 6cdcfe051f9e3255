"""Where a run's ServerApp writes its files: the run's artifact directory.

Each run has one, `<runs dir>/<run id>/`, on the machine of the exec that launches
it; every attempt of the run uses the same one (a resumed ServerApp finds what the
earlier attempts wrote). The runs dir is `$FLPG_RUNS_DIR`, else `<flpg home>/runs`
(`$FLPG_HOME`, else `/var/lib/flpg` for root, else `$XDG_DATA_HOME/flpg`, as for the
embedded cluster). The ServerApp process starts in it (its working directory, so a
relative path such as `open("model.pt", "wb")` lands there) and finds it in
`$FLPG_ARTIFACT_DIR`. The exec logs where it is (`artifacts of attempt N: HOST:PATH`,
an event of the run's log), and `flpg show` and `flpg pull` print it.

Modes: the directory is 0700. Run as the exec's own user, the runs dir is 0700 too.
With `--app-user USER` the run's directory belongs to USER (only USER and root may
read or write it), and the runs dir must be root's and writable by root alone (it is
made 0711: USER enters its own run's directory by name and lists none), so USER cannot
plant a link where the exec will change owners. Nothing is deleted: a run's files
outlive `flpg gc` and the run.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from flpg.bundle.appuser import AppUser
from flpg.store.pull import artifact_event

RUNS_DIR_ENV = "FLPG_RUNS_DIR"
"""The directory holding every run's artifact directory (default `<flpg home>/runs`)."""
ARTIFACT_DIR_ENV = "FLPG_ARTIFACT_DIR"
"""Set in a ServerApp's environment: its run's artifact directory (also its cwd)."""


def flpg_home() -> Path:
    """`$FLPG_HOME`, else `/var/lib/flpg` for root, else `$XDG_DATA_HOME/flpg`
    (~/.local/share/flpg): the embedded cluster's home."""
    explicit = os.environ.get("FLPG_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/flpg")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flpg"


def runs_dir() -> Path:
    """`$FLPG_RUNS_DIR`, else `<flpg home>/runs`."""
    explicit = os.environ.get(RUNS_DIR_ENV)
    return Path(explicit).expanduser().resolve() if explicit else flpg_home() / "runs"


def run_dir(run_id: int) -> Path:
    """The artifact directory of run `run_id` on this machine (not created here)."""
    return runs_dir() / str(run_id)


def prepare(run_id: int, owner: AppUser | None = None) -> Path:
    """Make run `run_id`'s artifact directory (and the runs dir) ready for its
    ServerApp: mode 0700, owned by `owner` (the `--app-user`) or by this process.

    Raises PermissionError naming the directory (the exec then fails the run with it)
    when it cannot be made, is not a plain directory, or, for `owner`, when the runs
    dir is not root's alone or `owner` cannot reach it."""
    root = runs_dir()
    try:
        root.mkdir(mode=0o700 if owner is None else 0o711, parents=True, exist_ok=True)
        if owner is not None:
            _check_guarded(root)
            os.chmod(root, 0o711)
            _check_reachable(root, owner)
        path = root / str(run_id)
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise PermissionError(f"{path} is not a directory")
        if owner is not None:
            os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
        os.chmod(path, 0o700, follow_symlinks=False)
    except OSError as exc:
        raise PermissionError(
            f"cannot prepare the run's artifact directory under {root}: {exc} "
            f"(set {RUNS_DIR_ENV} to another directory)"
        ) from exc
    return path


def _check_guarded(root: Path) -> None:
    """PermissionError unless `root` is root's and no other user may write it."""
    st = root.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise PermissionError(
            f"with --app-user the runs dir {root} must be a directory of root's that no "
            f"other user may write (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        )


def _check_reachable(root: Path, owner: AppUser) -> None:
    """PermissionError if `owner` may not search a directory on the way to `root`."""
    for part in [*reversed(root.parents), root]:
        st = part.stat()
        if st.st_uid == owner.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == owner.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            raise PermissionError(
                f"--app-user {owner.name} cannot enter {part} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}) on the way to the runs dir {root}"
            )


def event(attempt: int, path: Path) -> str:
    """The log event: attempt `attempt` writes its files in `path` on this machine
    (`flpg.store.pull.artifact_dir` reads it back)."""
    return artifact_event(attempt, socket.gethostname(), str(path))
