"""The unprivileged OS account the embedded cluster runs as when flpg runs as root.

PostgreSQL refuses to run as root: when flpg runs as root, initdb and pg_ctl run as
``FLPG_PG_USER``, else ``postgres`` if that account exists, else ``nobody``; an
existing data directory keeps running as the account that owns it. Otherwise the
account is None and everything runs as the current user.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flpg.errors import EmbeddedDatabaseError

__all__ = [
    "Account",
    "chown",
    "ensure_reachable",
    "private_dir",
    "run_as",
    "server_account",
    "server_user_name",
]


@dataclass(frozen=True)
class Account:
    """The unprivileged account the server runs as when flpg runs as root."""

    name: str
    uid: int
    gid: int


def _data_dir_owner(data_dir: Path) -> Account | None:
    """The non-root owner of an existing `data_dir`, or None."""
    try:
        st = data_dir.stat()
    except OSError:
        return None
    if st.st_uid == 0:
        return None
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        name = str(st.st_uid)
    return Account(name, st.st_uid, st.st_gid)


def server_account(data_dir: Path) -> Account | None:
    """The account to run the server of `data_dir` as, or None to run as the current user.

    Raises `EmbeddedDatabaseError` when flpg runs as root and the chosen account does
    not exist or is itself a root account.
    """
    if os.geteuid() != 0:
        return None
    owner = _data_dir_owner(data_dir)
    if owner is not None:
        return owner
    name = os.environ.get("FLPG_PG_USER", "").strip()
    if not name:
        name = "postgres"
        try:
            pwd.getpwnam(name)
        except KeyError:
            name = "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedDatabaseError(
            f"no account named {name!r} to run PostgreSQL as (flpg runs as root and "
            "PostgreSQL refuses to); create it or set FLPG_PG_USER to an existing "
            "unprivileged account"
        ) from None
    if entry.pw_uid == 0:
        raise EmbeddedDatabaseError(
            f"FLPG_PG_USER={name} is a root account and PostgreSQL refuses to run as root; "
            "set FLPG_PG_USER to an unprivileged account such as postgres"
        )
    return Account(name, entry.pw_uid, entry.pw_gid)


def server_user_name(data_dir: Path) -> str:
    """The name of the account the server of `data_dir` runs (or would run) as; never raises."""
    try:
        account = server_account(data_dir)
    except EmbeddedDatabaseError:
        return os.environ.get("FLPG_PG_USER", "?")
    if account is not None:
        return account.name
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _can_traverse(st: os.stat_result, account: Account) -> bool:
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def ensure_reachable(root: Path, account: Account) -> None:
    """Make sure `account` can enter the existing directory `root`.

    Raises `EmbeddedDatabaseError` when a parent of `root` bars the account (parents
    are never changed); adds the search bit to `root` itself when it lacks it.
    """
    for parent in reversed(root.parents):
        st = parent.stat()
        if not _can_traverse(st, account):
            raise EmbeddedDatabaseError(
                f"PostgreSQL runs as {account.name!r} (flpg runs as root), which cannot "
                f"enter {parent} (mode {stat.S_IMODE(st.st_mode):04o}); put the cluster "
                "where that account can reach it, e.g. FLPG_HOME=/var/lib/flpg, "
                "or set FLPG_PG_USER"
            )
    st = root.stat()
    if not _can_traverse(st, account):
        # root is flpg's own directory: let the server account pass through it.
        os.chmod(root, stat.S_IMODE(st.st_mode) | stat.S_IXGRP | stat.S_IXOTH)


def chown(path: Path, account: Account | None) -> None:
    """Give `path` to `account` (no-op when None)."""
    if account is not None:
        os.chown(path, account.uid, account.gid)


def private_dir(path: Path, account: Account | None) -> None:
    """Create `path` if needed, mode 0700, owned by `account`."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    chown(path, account)


def run_as(
    account: Account | None, argv: Sequence[str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `account` (None: the current user), capturing its output.

    The child gets the environment without ``PG*`` variables, the C locale, cwd ``/``
    and no stdin; raises `subprocess.TimeoutExpired` after `timeout` seconds.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    as_account: dict[str, Any] = {}
    if account is not None:
        env["HOME"] = "/"
        env["USER"] = env["LOGNAME"] = account.name
        as_account = {"user": account.uid, "group": account.gid, "extra_groups": []}
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        **as_account,
    )
