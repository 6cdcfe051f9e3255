"""App bundles on a worker's disk: extracted once, verified on every use, evicted.

The cache keeps, per hash, the verified zip (`HASH.zip`), its extracted tree
(`HASH/`, see `flpg.bundle.archive.extract` for what extraction refuses) and a lock file
(`HASH.lock`). Every use re-hashes the zip and compares every file of the tree with
the zip's member, so a tampered tree is detected and fetched again. A process that
uses a bundle holds a shared lock on `HASH.lock` for its lifetime; eviction (least
recently used first, beyond `max_entries` bundles or `max_bytes` on disk) takes an
exclusive lock without waiting, so it never removes a bundle that some process is
using. All changes to the cache happen under one cache-wide lock (`.lock`), waited
for at most LOCK_WAIT s.

A `shared` cache is one that app processes of another OS user read (`flpg node
--app-user`, `flpg.bundle.appuser`): its directories are mode 0755 and its files 0644
whatever the umask, and a copy with an entry that is not owned by the cache
directory's owner, or has another mode, is not intact (it is extracted again). A
process that may not write the cache (it cannot take the locks) reads it with
`verified`, which checks the intact copy its worker extracted and changes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from flpg.bundle.archive import CORRUPT, extract, tree_matches
from flpg.errors import AppError

log = logging.getLogger("flpg.bundle.cache")

CACHE_MAX_BYTES = 2 << 30
"""Default bound of a cache's size on disk (`FLPG_CACHE_MAX_MB` overrides)."""
CACHE_MAX_ENTRIES = 32
"""Default bound of the number of bundles in a cache (`FLPG_CACHE_MAX_APPS` overrides)."""
LOCK_WAIT = 60.0
"""Seconds a process waits for the cache-wide lock before giving up."""
READ_ONLY_ENV = "FLPG_CACHE_READ_ONLY"
"""Set (to 1) in an app process that may only read its cache (`BundleCache.verified`):
its worker extracted the bundle (`flpg.bundle.appuser`)."""

_HASH = re.compile(r"^[0-9a-f]{64}$")
_held: dict[tuple[Path, str], int] = {}
"""Shared locks this process holds on bundles it uses (kept until it exits)."""


def _env_int(name: str, default: int, scale: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AppError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise AppError(f"{name} must be >= 1, got {raw}")
    return value * scale


class BundleCache:
    """Extracted bundles on local disk, verified on every use, evicted LRU-first.

    `max_bytes` and `max_entries` bound the cache (defaults: `FLPG_CACHE_MAX_MB` and
    `FLPG_CACHE_MAX_APPS`, else CACHE_MAX_BYTES and CACHE_MAX_ENTRIES). A bundle in
    use by any process is never evicted, so the cache may exceed them meanwhile.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int | None = None,
        max_entries: int | None = None,
        shared: bool = False,
    ) -> None:
        self.directory = directory
        self.shared = shared
        """Read by another OS user: explicit modes, and owner and modes are checked."""
        self.max_bytes = max_bytes or _env_int("FLPG_CACHE_MAX_MB", CACHE_MAX_BYTES, 1 << 20)
        self.max_entries = max_entries or _env_int("FLPG_CACHE_MAX_APPS", CACHE_MAX_ENTRIES)

    def path(self, app_hash: str, fetch: Callable[[], bytes]) -> Path:
        """The verified, extracted app for `app_hash`, held in use until this process ends.

        `fetch()` returns the bundle's bytes; it is called only when the cache has no
        intact copy. Raises AppError if the hash is malformed, the fetched bytes do not
        hash to it, or the bundle is unsafe or too big (see `extract`).
        """
        if not _HASH.match(app_hash):
            raise AppError(f"app hash {app_hash[:80]!r} is not a SHA-256 hex digest")
        target = self.directory / app_hash
        with self._locked():
            self._hold(app_hash)
            intact = self._intact(app_hash)
        if not intact:
            data = fetch()
            actual = hashlib.sha256(data).hexdigest()
            if actual != app_hash:
                raise AppError(
                    f"app bundle {app_hash[:12]} is corrupt (its bytes hash to {actual[:12]})"
                )
            with self._locked():
                if not self._intact(app_hash, report=False):  # another process's install
                    self._install(app_hash, data)
        with self._locked():
            self._evict()
        return target

    def verified(self, app_hash: str) -> Path:
        """The extracted app for `app_hash`, read only: no lock is taken and nothing is
        written, for a process that may only read the cache (its worker extracted the
        bundle and holds it in use). AppError if the hash is malformed or the copy is
        missing or not intact."""
        if not _HASH.match(app_hash):
            raise AppError(f"app hash {app_hash[:80]!r} is not a SHA-256 hex digest")
        if not self._intact(app_hash, report=False):
            raise AppError(
                f"app bundle {app_hash[:12]} is missing or not intact in the read-only "
                f"app cache {self.directory} (its worker extracts it before starting the "
                "process)"
            )
        return self.directory / app_hash

    def release(self, app_hash: str) -> None:
        """Stop holding a bundle this process used (it becomes evictable); a process
        that ends releases all of its bundles."""
        fd = _held.pop((self.directory.resolve(), app_hash), None)
        if fd is not None:
            os.close(fd)

    # ---------------------------------------------------------------- locking

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.shared:
            os.chmod(self.directory, 0o755)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AppError(
                            f"the app cache {self.directory} stayed locked for "
                            f"{LOCK_WAIT:g} s by another process"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def _hold(self, app_hash: str) -> None:
        """Take (once per process) the shared lock that marks the bundle in use, and
        record the use for LRU (call under the cache lock)."""
        lock = self.directory / f"{app_hash}.lock"
        key = (self.directory.resolve(), app_hash)
        if key not in _held:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)  # only evictors take it exclusively, under our lock
            _held[key] = fd
        os.utime(lock)

    # ---------------------------------------------------------------- content

    def _intact(self, app_hash: str, *, report: bool = True) -> bool:
        """True if the zip hashes to `app_hash` and the tree matches it (cache lock held);
        logs a copy that does not (if `report`)."""
        zip_path = self.directory / f"{app_hash}.zip"
        tree = self.directory / app_hash
        try:
            data = zip_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != app_hash or not tree.is_dir():
                return False
            if self.shared and not self._sealed([zip_path, *_entries(tree)]):
                return False
            if tree_matches(data, tree):
                return True
        except (OSError, AppError, *CORRUPT):
            pass
        if report and (zip_path.exists() or tree.exists()):
            log.warning("cached app bundle %s did not match its hash; extracting it again", tree)
        return False

    def _install(self, app_hash: str, data: bytes) -> None:
        """Extract `data` and put it in place of any copy there (cache lock held)."""
        label = f"app bundle {app_hash[:12]}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.directory))
        try:
            extract(data, tmp, label)
            if self.shared:  # readable by another OS user, writable by no other
                for path in _entries(tmp):  # (extraction writes no symlinks)
                    os.chmod(path, 0o755 if path.is_dir() else 0o644)
            tree = self.directory / app_hash
            _remove(tree)
            zip_tmp = self.directory / f".tmp-{app_hash}.zip"
            zip_tmp.write_bytes(data)
            if self.shared:
                os.chmod(zip_tmp, 0o644)
            tmp.rename(tree)
            zip_tmp.replace(self.directory / f"{app_hash}.zip")
        finally:
            _remove(tmp)

    def _sealed(self, paths: list[Path]) -> bool:
        """Whether every path is owned by the cache directory's owner (the worker's
        user) with mode 0755 (a directory) or 0644 (a regular file): readable by all,
        writable by no other user (a symlink never is: extraction writes none)."""
        owner = self.directory.stat().st_uid
        for path in paths:
            st = path.lstat()
            mode = 0o755 if stat.S_ISDIR(st.st_mode) else 0o644
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                return False
            if st.st_uid != owner or stat.S_IMODE(st.st_mode) != mode:
                return False
        return True

    # ---------------------------------------------------------------- eviction

    def _evict(self) -> None:
        """Remove least recently used bundles not in use until the cache is within
        its bounds; also removes leftovers of interrupted installs (cache lock held)."""
        sizes: dict[str, int] = {}
        used: dict[str, float] = {}
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".tmp-"):
                _remove(Path(entry.path))
                continue
            name = entry.name.split(".")[0]
            if not _HASH.match(name):
                continue
            sizes[name] = sizes.get(name, 0) + _size(Path(entry.path))
            if entry.name.endswith(".lock"):
                used[name] = entry.stat().st_mtime
        total = sum(sizes.values())
        count = len(sizes)
        for name in sorted(sizes, key=lambda n: used.get(n, 0.0)):
            if count <= self.max_entries and total <= self.max_bytes:
                break
            if self._evict_one(name):
                count -= 1
                total -= sizes[name]

    def _evict_one(self, app_hash: str) -> bool:
        """Remove one bundle unless a process holds it; True if removed."""
        lock = self.directory / f"{app_hash}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use
            _remove(self.directory / app_hash)
            (self.directory / f"{app_hash}.zip").unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            log.info("evicted app bundle %s from the cache", app_hash[:12])
            return True
        finally:
            os.close(fd)


def _entries(tree: Path) -> Iterator[Path]:
    """`tree` and every directory and file under it (symlinks not followed)."""
    yield tree
    for root, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            yield Path(root, name)


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        with suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _remove(path: Path) -> None:
    """Remove a file or directory tree if present (renamed aside first, so a
    half-removed tree is never seen under its own name)."""
    if path.is_dir() and not path.is_symlink():
        aside = path.with_name(f".tmp-gone-{path.name}-{os.getpid()}")
        try:
            path.rename(aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def read_only_cache() -> bool:
    """Whether this process may only read its cache (READ_ONLY_ENV is set)."""
    return bool(os.environ.get(READ_ONLY_ENV))


def default_cache_dir() -> Path:
    """`$FLPG_CACHE_DIR`, else `$XDG_CACHE_HOME/flpg/apps` (~/.cache/flpg/apps)."""
    explicit = os.environ.get("FLPG_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flpg" / "apps"
