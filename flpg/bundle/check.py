"""Checking an app's components without running its code in the caller's process.

`flpg run` imports the ServerApp and ClientApp of an app (and checks their types)
before it stores anything. That import runs untrusted code, which may hang, exit or
kill itself; so it runs here, in a child process (`python -m flpg.bundle.check`) with:

- a time limit (`FLPG_APP_CHECK_TIMEOUT` seconds, default CHECK_TIMEOUT), after which
  the child's whole process group is killed;
- its own session, no stdin, its output discarded (the caller's one-line errors stay
  one line), no bytecode written, and the environment app processes get
  (`flpg.bundle.process.app_environment`) without the database URL or libpq's variables;
- `import flwr...` resolved to flpg, as in the app processes (`flpg.compat.flwr`), so a
  Flower name flpg lacks is refused here, before anything is stored;
- the verdict written to a file (not a pipe a leftover grandchild could hold open).

Whatever the child does, the caller gets `None` or an AppError naming the app and what
happened: the component's own error, `timed out after N s`, `exited with code X`, or
`was killed by SIGNAME`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from flpg.bundle.appdir import AppSpec, load_component, shown
from flpg.bundle.process import app_environment, describe_exit
from flpg.compat.flwr import install as install_flwr_alias
from flpg.errors import AppError
from flpg.settings import DATABASE_URL_ENV

CHECK_TIMEOUT = 60.0
"""Seconds the import of an app's components may take by default."""
_RESULT_LIMIT = 64 << 10
_POLL = 0.02


def check_timeout() -> float:
    """`FLPG_APP_CHECK_TIMEOUT` in seconds, else CHECK_TIMEOUT; AppError if malformed."""
    raw = os.environ.get("FLPG_APP_CHECK_TIMEOUT")
    if raw is None:
        return CHECK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise AppError(f"FLPG_APP_CHECK_TIMEOUT={shown(raw, 40)} is not a number of seconds")
    return value


def _child_env() -> dict[str, str]:
    """What app processes get (`flpg.bundle.process.app_environment`), minus the database URL
    and libpq's variables: importing needs no database."""
    env = app_environment({"PYTHONDONTWRITEBYTECODE": "1"})
    return {k: v for k, v in env.items() if k != DATABASE_URL_ENV and not k.startswith("PG")}


def run_check(root: Path, spec: AppSpec, *, where: str, timeout: float | None = None) -> None:
    """Import `spec`'s components from `root` in a child process; AppError unless both
    import as the right types within `timeout` s (default: `check_timeout()`)."""
    limit = check_timeout() if timeout is None else timeout
    root = root.resolve()
    prefix = f"app {shown(spec.name, 80)} ({shown(where)})"
    with tempfile.TemporaryDirectory(prefix="flpg-appcheck-") as tmp:
        result = Path(tmp) / "result.json"
        argv = [sys.executable, "-B", "-P", "-m", "flpg.bundle.check", str(root)]
        child = subprocess.Popen(
            [*argv, spec.serverapp, spec.clientapp, str(result)],
            cwd=root,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        exited = _wait_unreaped(child.pid, limit)
        # Kill whatever the app left in the child's group while the child is still
        # unreaped: its pid, and so the group id, cannot belong to anyone else yet.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        code = child.wait()
        if not exited:
            raise AppError(f"{prefix}: importing its components timed out after {limit:g} s")
        verdict = _read_verdict(result)
    if verdict == "ok" and code == 0:
        return
    if verdict not in (None, "ok"):
        raise AppError(f"{prefix}: {verdict}")
    raise AppError(f"{prefix}: importing its components {describe_exit(code)}")


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for `pid` to exit, leaving it unreaped; True if it did."""
    deadline = time.monotonic() + timeout
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))


def _read_verdict(path: Path) -> str | None:
    """ "ok", the component's error, or None if the child reported nothing readable."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(_RESULT_LIMIT))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("ok") is True:
        return "ok"
    error = doc.get("error")
    return shown(error, 1000) if isinstance(error, str) else None


def main(argv: list[str]) -> None:
    """The child: import both components and write the verdict; never returns."""
    root, server_ref, client_ref, result = argv
    from flpg.clientapp import ClientApp
    from flpg.serverapp import ServerApp

    install_flwr_alias()  # as in the app processes: `import flwr...` resolves to flpg
    try:
        load_component(Path(root), server_ref, ServerApp)
        load_component(Path(root), client_ref, ClientApp)
        verdict: dict[str, object] = {"ok": True}
    except AppError as exc:
        verdict = {"error": str(exc)}
    with open(result, "w") as f:
        json.dump(verdict, f)
    # Leave at once: threads or atexit hooks the app started must not delay the verdict.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
