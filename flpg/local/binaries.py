"""Finding the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``).

The embedded cluster runs whichever installation `find_bindir` finds first; the
data directory it creates records that major version (`server_major`).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from flpg.errors import EmbeddedDatabaseError

__all__ = ["find_bindir", "server_major"]

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

_INSTALL_HINT = (
    "install them (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql@16) or set FLPG_PG_BINDIR"
)

_PROBE_TIMEOUT = 15.0  # seconds, for `postgres --version` and `pg_config --bindir`


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
        "macOS: brew install postgresql@16)"
    )


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Search order: env ``FLPG_PG_BINDIR`` (must be valid when set); ``pg_ctl`` on PATH
    (symlinks resolved); ``pg_config --bindir``; ``/usr/lib/postgresql/*/bin`` (highest
    major first); Homebrew; ``/usr/local/pgsql/bin``. Raises `EmbeddedDatabaseError`
    saying what to install when none qualifies.
    """
    env = os.environ.get("FLPG_PG_BINDIR", "").strip()
    if env:
        return _env_bindir(env)
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
    raise EmbeddedDatabaseError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH, "
        "via pg_config or in /usr/lib/postgresql/*/bin; " + _INSTALL_HINT
    )


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
