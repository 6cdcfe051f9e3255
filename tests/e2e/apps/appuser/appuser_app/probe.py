"""What this process may do on its worker's machine, as a JSON-able dict."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _try(action: Callable[[], object]) -> str:
    """`ok`, or the errno name of the OSError the action raised."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def _write(directory: str | Path) -> Callable[[], object]:
    return lambda: Path(directory, f"probe-{os.getpid()}").write_text("x")


def probe(config: dict[str, Any]) -> dict[str, Any]:
    """The process's ids, umask, home and cwd, and the outcome (`ok` or an errno name)
    of reading the secret and the credential file, writing into the cache (by its real
    path, by the path the process was given, and into its own extracted bundle),
    signalling its parent (its worker) and writing into its home."""
    home = os.environ.get("HOME", "")
    umask = os.umask(0)
    os.umask(umask)
    st = os.stat(home)
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "umask": umask,
        "home": home,
        "home_mode": stat.S_IMODE(st.st_mode),
        "home_uid": st.st_uid,
        "cwd": os.getcwd(),
        "ppid": os.getppid(),
        "read_secret": _try(lambda: Path(config["secret"]).read_bytes()),
        "read_credential": _try(lambda: Path(config["credential"]).read_bytes()),
        "write_cache": _try(_write(config["cache-dir"])),
        "write_given_cache": _try(_write(os.environ.get("FLPG_CACHE_DIR", "/nonexistent"))),
        "write_bundle": _try(_write(Path(__file__).parent)),
        "signal_worker": _try(lambda: os.kill(os.getppid(), 0)),
        "write_home": _try(_write(home)),
    }
