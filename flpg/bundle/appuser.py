"""App processes run as another OS user: `flpg node --app-user USER` and `flpg exec
--app-user USER` (the worker runs as root).

Tenant code running as its worker's OS user can read the worker's files (its
credential file among them), signal the worker, and write the bundle cache that other
runs load their code from. As USER, it cannot:

- `app_user(name)` resolves USER, refusing in one line (ConfigError, exit 2) a worker
  that is not root, a USER that does not exist, and root itself.
- `AppSandbox` is what the worker holds meanwhile. Its bundle cache is `shared`
  (`flpg.bundle.cache`): root-owned, directories 0755 and files 0644, writable by no
  other user; the worker itself fetches, verifies and extracts a run's bundle there
  before it starts the run's process, and keeps it in use until the process ended.
  The process gets the cache directory as an open file descriptor (`/proc/self/fd/N`,
  in `FLPG_CACHE_DIR`, with `FLPG_CACHE_READ_ONLY=1`), so it reads the cache wherever
  it is (under /root, say) and only checks the copy (`BundleCache.verified`).
- Each process gets an `AppSeat`: USER's uid, its primary group and no other
  (`extra_groups=[]`), umask 077, and a private HOME (mode 0700, owned by USER, the
  process's cwd and its TMPDIR, under a random name) made for it in a directory of the
  worker's in the temporary directory (mode 0711) and removed once the process ended.
  The database URL keeps only what a run role needs: the CA certificate and CRLs it
  names are copied into HOME (the worker's own may sit where USER cannot read), the
  worker's client certificate, key and password file are left out.
- The interpreter is `$FLPG_APP_PYTHON`, else the worker's own (`app_python`): USER
  must be able to run it and import flpg with it (a Python installed under /root is
  out of its reach).

`check_sandbox`, which the CLI runs before the worker starts, refuses (ConfigError) a
cache directory that USER could write (it, or a directory above it, is not root's, or
others may write it without the sticky bit), a database socket directory or temporary
directory that USER cannot reach, and an interpreter with which USER cannot import
flpg (it tries, as USER).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flpg.bundle.cache import READ_ONLY_ENV, BundleCache
from flpg.bundle.process import app_environment
from flpg.errors import ConfigError
from flpg.store.credentials import role_url, url_params

APP_PYTHON_ENV = "FLPG_APP_PYTHON"
"""The interpreter app processes run as another OS user start with (default: the
worker's): USER must be able to run it and import flpg with it."""
PROBE_TIMEOUT = 60.0
"""Seconds the check that USER can run the interpreter and import flpg may take."""
NEEDS_ROOT = "--app-user needs the worker to run as root (it switches the app processes' user)"

COPIED = {"sslrootcert": "root.crt", "sslcrl": "root.crl", "sslcrldir": "crl.d"}
"""URL parameters naming public files a run role's connection needs, and the name of
their copy in the process's HOME (`.postgresql/`)."""
COPIED_ENV = {"sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR"}
DROPPED = ("sslcert", "sslkey", "sslpassword", "passfile")
"""URL parameters of the worker's own identity, never given to an app process."""
DROPPED_ENV = ("PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLCERT", "PGSSLKEY", "PGPASSFILE")


@dataclass(frozen=True)
class AppUser:
    """The OS user app processes run as."""

    name: str
    uid: int
    gid: int


def app_user(name: str) -> AppUser:
    """USER `name` (or a numeric uid); ConfigError unless this process is root and
    USER exists and is not root."""
    if os.geteuid() != 0:
        raise ConfigError(NEEDS_ROOT)
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError, OverflowError):
        raise ConfigError(f"--app-user: there is no OS user {name!r} on this machine") from None
    if entry.pw_uid == 0:
        raise ConfigError(
            f"--app-user {name!r} is root (uid 0); name an unprivileged user that runs nothing else"
        )
    return AppUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _mode(path: Path) -> str:
    return f"{path} (owner uid {path.stat().st_uid}, mode {stat.S_IMODE(path.stat().st_mode):04o})"


def _blocker(user: AppUser, path: Path) -> Path | None:
    """The first directory on the way to `path` (itself included) that `user` may not
    search, or None."""
    path = path.resolve()
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except FileNotFoundError:
            return None  # (its worker cannot connect either)
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & bit:
            return part
    return None


def _check_cache(user: AppUser, directory: Path) -> None:
    """Make the cache directory (0755) and check that no directory on its way lets
    `user` replace it: each is root's, and writable by others only with the sticky bit."""
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    for part in [*directory.parents, directory]:
        st = part.stat()
        guarded = part != directory and st.st_mode & stat.S_ISVTX
        if st.st_uid != 0 or (st.st_mode & 0o022 and not guarded and part != directory):
            raise ConfigError(
                f"--app-user {user.name}: the app cache directory {directory} must be "
                f"writable by root alone, and so must every directory above it: {_mode(part)}"
            )
    os.chmod(directory, 0o755)


def _check_reachable(user: AppUser, url: str, homes: Path) -> None:
    """ConfigError if `user` cannot reach the database's socket directory or the
    directory of private homes."""
    hosts = str(url_params(url).get("host") or "").split(",")
    wanted = [(Path(h), "the database's unix socket directory") for h in hosts if h[:1] == "/"]
    wanted += [(homes, "the temporary directory (TMPDIR) that holds the app processes' homes")]
    for path, what in wanted:
        blocker = _blocker(user, path)
        if blocker is not None:
            hint = (
                "; serve the database over TCP (`flpg db serve --listen`) or let it through"
                if "socket" in what
                else ""
            )
            raise ConfigError(
                f"--app-user {user.name}: it cannot reach {what} {path}: {_mode(blocker)}{hint}"
            )


def app_python() -> str:
    """The interpreter of app processes run as another OS user: `$FLPG_APP_PYTHON`,
    else the worker's own."""
    return os.environ.get(APP_PYTHON_ENV) or sys.executable


def _check_python(user: AppUser) -> None:
    """ConfigError unless `user` can run `app_python()` and import flpg's app processes."""
    python = app_python()
    argv = [python, "-c", "import flpg.exec.runner, flpg.node.appprocess"]
    env = {k: v for k, v in app_environment({}).items() if k not in DROPPED_ENV}
    env.update(HOME="/", USER=user.name, LOGNAME=user.name)
    try:
        done = subprocess.run(
            argv,
            env=env,
            cwd="/",
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
        if done.returncode == 0:
            return
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        error = lines[-1] if lines else f"exit code {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = str(exc)
    raise ConfigError(
        f"--app-user {user.name}: it cannot run {python} and import flpg ({error}); "
        f"set {APP_PYTHON_ENV} to an interpreter it can run that imports flpg"
    )


def check_sandbox(user: AppUser, cache_dir: Path, url: str) -> None:
    """What `AppSandbox` checks at start, and whether USER can run the app processes'
    interpreter (`app_python`) and import flpg, for a worker to refuse before it starts
    serving: ConfigError if USER could write `cache_dir` (which is made, mode 0755), or
    cannot reach the database's socket directory or TMPDIR, or cannot run flpg."""
    _check_cache(user, cache_dir)
    _check_reachable(user, url, Path(tempfile.gettempdir()))
    _check_python(user)


class AppSandbox:
    """A worker's means to run app processes as `user`: the shared bundle cache in
    `cache_dir` (and its open descriptor), the private homes, the bundles in use."""

    def __init__(self, user: AppUser, cache_dir: Path, url: str, kind: str) -> None:
        """ConfigError as `check_sandbox` (whose check of the interpreter is left out)."""
        _check_cache(user, cache_dir)
        _check_reachable(user, url, Path(tempfile.gettempdir()))
        self.user = user
        self.python = app_python()
        self.cache = BundleCache(cache_dir, shared=True)
        self.homes = Path(tempfile.mkdtemp(prefix=f"flpg-{kind}-apps-"))
        os.chmod(self.homes, 0o711)  # USER reaches its homes by name, lists none
        self._cache_fd = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY)
        self._lock = threading.Lock()
        self._uses: dict[str, int] = {}

    def seat(self, label: str, app_hash: str, fetch: Callable[[], bytes], url: str) -> AppSeat:
        """One process's seat: bundle `app_hash` extracted and verified (`fetch()`
        gives its bytes when the cache has no intact copy; AppError as
        `BundleCache.path`) and kept in use, a private home `label-XXXX` (random, as
        USER can guess no name), and run role URL `url` fit for it (`_confined_url`)."""
        with self._lock:
            self.cache.path(app_hash, fetch)  # verified again for each process
            self._uses[app_hash] = self._uses.get(app_hash, 0) + 1
        try:
            # Root's until ready: USER writes nothing there before the process starts.
            home = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.homes))
            seat = AppSeat(self, home, app_hash, _confined_url(url, home))
            for path in [home, *home.rglob("*")]:
                os.chown(path, self.user.uid, self.user.gid, follow_symlinks=False)
        except BaseException:
            self._release(app_hash)
            raise
        return seat

    @property
    def cache_fd(self) -> int:
        return self._cache_fd

    def _release(self, app_hash: str) -> None:
        with self._lock:
            left = self._uses.get(app_hash, 0) - 1
            if left > 0:
                self._uses[app_hash] = left
            elif self._uses.pop(app_hash, None) is not None:
                self.cache.release(app_hash)  # evictable again

    def close(self) -> None:
        """Remove the homes and stop holding the bundles (call once every process ended)."""
        with self._lock:
            for app_hash in self._uses:
                self.cache.release(app_hash)
            self._uses.clear()
            if self._cache_fd >= 0:
                os.close(self._cache_fd)
                self._cache_fd = -1
        shutil.rmtree(self.homes, ignore_errors=True)


def _confined_url(url: str, home: Path, source: Mapping[str, str] | None = None) -> str:
    """A run role's `url` for a process with `home`: the CA certificate and CRLs it
    (or `source`'s libpq variables, the worker's environment by default) names copied
    into `home/.postgresql`, the worker's client certificate, key and password file
    left out."""
    source = os.environ if source is None else source
    params: dict[str, Any] = url_params(url)
    user, password = str(params.pop("user", "")), str(params.pop("password", ""))
    for key in DROPPED:
        params.pop(key, None)
    private = home / ".postgresql"
    for key, name in COPIED.items():
        given = str(params.get(key) or source.get(COPIED_ENV[key]) or "")
        if not given or given == "system" or not os.path.exists(given):
            continue
        private.mkdir(mode=0o700, exist_ok=True)
        copy = private / name
        if os.path.isdir(given):
            shutil.copytree(given, copy)
        else:
            shutil.copyfile(given, copy)
        params[key] = str(copy)
    return role_url(params, user, password)


@dataclass
class AppSeat:
    """One app process's place in a sandbox: its home, the bundle it uses."""

    sandbox: AppSandbox
    home: Path
    app_hash: str
    url: str
    """The run role's URL for the process (`_confined_url`)."""
    _closed: bool = field(default=False, repr=False)

    @property
    def python(self) -> str:
        """The interpreter the process starts with (`app_python`)."""
        return self.sandbox.python

    @property
    def cache_dir(self) -> str:
        """The cache directory as the process sees it (its inherited descriptor)."""
        return f"/proc/self/fd/{self.sandbox.cache_fd}"

    def popen_kwargs(self) -> dict[str, Any]:
        """What `subprocess.Popen` needs to start the process as the sandbox's user."""
        user = self.sandbox.user
        return {
            "user": user.uid,
            "group": user.gid,
            "extra_groups": [],
            "umask": 0o077,
            "cwd": self.home,
            "pass_fds": (self.sandbox.cache_fd,),
        }

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` (from `app_environment`) for the process: its user's names, its home
        for HOME, TMPDIR and caches, the read-only cache descriptor; no libpq file of
        the worker's."""
        out = {k: v for k, v in env.items() if k not in DROPPED_ENV}
        name = self.sandbox.user.name
        out.update(
            HOME=str(self.home),
            USER=name,
            LOGNAME=name,
            TMPDIR=str(self.home),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            FLPG_CACHE_DIR=self.cache_dir,
        )
        out[READ_ONLY_ENV] = "1"
        return out

    def close(self) -> None:
        """Remove the home and stop using the bundle (once the process ended)."""
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self.home, ignore_errors=True)
        self.sandbox._release(self.app_hash)
