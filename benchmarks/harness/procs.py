"""Worker processes of one configuration, and a cleanup that leaves none behind.

Every process the harness starts gets two environment variables: the invocation's
tag and the configuration's tag. Children inherit them, so processes that flpg or
Flower start in sessions of their own (ServerApps, ClientApps, Flower's SuperExec)
are found again by scanning /proc/*/environ, and killed, even when their parent is
already gone. The PostgreSQL cluster is started from the harness's own process, whose
environment carries no tag, so a tag sweep never touches it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RUN_TAG_ENV = "VS_FLOWER_RUN"
CONFIG_TAG_ENV = "VS_FLOWER_CONFIG"
RUN_TAG = uuid.uuid4().hex
"""This invocation's tag (one per harness process)."""


class HarnessError(Exception):
    """A configuration cannot go on; the message says why."""


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: unwind and clean up as for Ctrl-C."""


@dataclass
class Proc:
    """One long-running process of a configuration, in its own session."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def cmdline(pid: int) -> str:
    """The command line of `pid` ('?' if it is gone)."""
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _is_zombie(pid: str) -> bool:
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def tagged_pids(key: str, value: str) -> list[int]:
    """Live (not zombie) processes whose environment has `key=value`."""
    needle = f"{key}={value}".encode()
    me = os.getpid()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and not _is_zombie(entry):
            found.append(int(entry))
    return found


def is_ours(pid: int) -> bool:
    """Whether `pid` carries this invocation's tag (started by the harness or by
    something it started)."""
    try:
        environ = Path("/proc", str(pid), "environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_TAG_ENV}={RUN_TAG}".encode() in environ.split(b"\0")


def kill_tagged(key: str, value: str, wait: float = 5.0) -> list[str]:
    """SIGKILL every live process tagged `key=value`; what was killed."""
    killed: list[str] = []
    for pid in tagged_pids(key, value):
        killed.append(f"pid {pid}: {cmdline(pid)[:120]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while tagged_pids(key, value) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


class ProcessSet:
    """The processes of one configuration: started tagged, stopped together."""

    def __init__(self, name: str, logdir: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.tag = f"{name}-{uuid.uuid4().hex[:8]}"
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.env = {**env, RUN_TAG_ENV: RUN_TAG, CONFIG_TAG_ENV: self.tag}
        # flpg passes app processes only an allowlisted environment: name the tags.
        self.env["FLPG_APP_ENV"] = f"{RUN_TAG_ENV} {CONFIG_TAG_ENV}"
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        """Start `argv` in its own session, output to `<logdir>/<name>.log`."""
        log_path = self.logdir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a short command to completion (tagged like the workers)."""
        try:
            return subprocess.run(
                list(argv),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"`{' '.join(argv)}` did not finish in {timeout:g} s") from exc

    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise HarnessError(
                "process(es) exited unexpectedly: "
                + ", ".join(f"{p.name} (exit {p.popen.returncode})" for p in dead)
                + "\n"
                + self.log_tails(dead)
            )

    def log_tails(self, procs: Sequence[Proc] | None = None, lines: int = 12) -> str:
        chosen = self.procs if procs is None else procs
        return "\n".join(f"----- {p.name} ({p.log_path})\n{p.tail(lines)}" for p in chosen)

    def stop(self, order: Sequence[Sequence[str]] = (), grace: float = 10.0) -> list[str]:
        """SIGTERM the process groups, in `order` (lists of name prefixes, earlier
        first; the rest last), SIGKILL a group after `grace` s, then kill any process
        still carrying this configuration's tag. Returns what had to be killed."""
        killed: list[str] = []
        remaining = list(self.procs)
        batches: list[list[Proc]] = []
        for prefixes in order:
            batch = [p for p in remaining if p.name.startswith(tuple(prefixes))]
            remaining = [p for p in remaining if p not in batch]
            batches.append(batch)
        batches.append(remaining)
        for batch in batches:
            for proc in batch:
                if proc.alive():
                    signal_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for proc in batch:
                try:
                    proc.popen.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    signal_group(proc.pid, signal.SIGKILL)
                    killed.append(proc.name)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(5)
        killed += kill_tagged(CONFIG_TAG_ENV, self.tag)
        return killed


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP while cleaning up, so that a second one
    cannot leave processes or the cluster behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    import socket

    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_port(port: int, timeout: float, alive: Proc) -> None:
    """Wait until 127.0.0.1:`port` accepts connections (while `alive` runs)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not alive.alive():
            raise HarnessError(f"{alive.name} exited before listening\n{alive.tail()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{alive.name} not listening on {port} after {timeout:g} s")
        time.sleep(0.1)


def run_guarded(
    body: Callable[[], None],
    teardown: Callable[[], None],
    workdir: Path,
    *,
    keep_logs: bool,
    progress: Callable[[str], None],
) -> int:
    """Run a benchmark's `body`; on Ctrl-C (or SIGTERM) stop it, and in any case kill
    tagged leftovers, `teardown()` and remove `workdir` (unless `keep_logs`), without
    being interrupted. Returns the exit code: 0, or 130 when interrupted."""
    code = 0
    try:
        body()
    except (KeyboardInterrupt, Interrupted):
        progress("interrupted: stopping everything; the tables show what finished")
        code = 130
    finally:
        with uninterruptible():
            killed = kill_tagged(RUN_TAG_ENV, RUN_TAG)
            if killed:
                progress("killed leftover processes: " + "; ".join(killed))
            teardown()
            if keep_logs:
                progress(f"logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    return code


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP raise Interrupted and SIGINT KeyboardInterrupt, so a
    benchmark stopped by any of them cleans up (see `run_guarded`)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
