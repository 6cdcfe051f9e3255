"""A complete local federation in the background: `flpg up` / `flpg down`.

`up` starts one link, one exec and N node workers as detached processes on one
database, each as its own enrolled role (`flpg.local.enrolled`), records them in
`<flpg home>/federation.json`, and waits until the nodes are online. `down` stops
exactly the processes `up` recorded (and the embedded cluster, if `up` was what
started it). Both hold a lock, so two at once never double-start.

A recorded process is recognised by its pid *and* the identity `up` recorded when
it started it (`process_start`: the boot id and the start time from
`/proc/PID/stat`, or `ps -o lstart=` where there is no /proc). A pid that now
belongs to another process (the recorded one ended and the pid was reused) fails
that check and is never signalled; on Linux the signal goes through a pidfd opened
before the check, so the pid cannot change hands between check and signal. A record
without an identity (written by an older flpg) is never signalled either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flpg.errors import FlpgError, InvalidState
from flpg.local import enrolled
from flpg.settings import DATABASE_URL_ENV
from flpg.store import nodes as store_nodes
from flpg.store.db import connect

STARTUP_TIMEOUT = 60.0
KILL_WAIT = 5.0
"""Seconds `down` waits for SIGKILLed processes to be gone."""


@dataclass
class Member:
    role: str
    name: str
    pid: int
    log: str
    start: str | None = None
    """The process's identity when `up` started it (see `process_start`)."""


@dataclass
class Federation:
    url: str
    num_nodes: int
    started_db: bool
    members: list[Member] = field(default_factory=list)

    def alive(self) -> list[Member]:
        """The recorded processes that still run (the same processes, not their pids)."""
        return [m for m in self.members if _is_ours(m)]


def process_start(pid: int) -> str | None:
    """What tells this process from any other that has or had the same pid: the boot
    id and start time (clock ticks since boot) on Linux, else `ps`'s start time.
    None if there is no such process or it is a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return _ps_start(pid)
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces
    if fields[0] in (b"Z", b"X"):
        return None
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot}:{fields[19].decode()}"  # field 22 of proc(5): starttime


def _ps_start(pid: int) -> str | None:
    """`ps`'s state and start time of `pid` (systems without /proc)."""
    try:
        out = subprocess.run(
            ["ps", "-o", "stat=,lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or out.startswith("Z"):
        return None
    return " ".join(out.split()[1:])


def _is_ours(member: Member) -> bool:
    """True if the member's pid is still the process `up` started."""
    return member.start is not None and process_start(member.pid) == member.start


def _signal(member: Member, sig: signal.Signals) -> bool:
    """Send `sig` to the member's process if it is still the one `up` started; True if
    sent. The pidfd (Linux) pins the process before the check, so a pid reused in
    between is never signalled."""
    if member.start is None:
        return False
    pidfd = None
    with contextlib.suppress(OSError, AttributeError):  # no pidfd: plain kill after the check
        pidfd = os.pidfd_open(member.pid)
    try:
        if process_start(member.pid) != member.start:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(member.pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _state_file(home: Path) -> Path:
    return home / "federation.json"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "federation.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load(home: Path) -> Federation | None:
    """The recorded federation, or None if none was started; InvalidState if the
    record is unreadable."""
    path = _state_file(home)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        members = [Member(**m) for m in doc.pop("members")]
        return Federation(members=members, **doc)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidState(
            f"{path} is not a record of a local federation ({type(exc).__name__}); "
            "stop its processes yourself and remove it"
        ) from None


def _save(home: Path, federation: Federation) -> None:
    tmp = _state_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(federation), indent=2))
    tmp.replace(_state_file(home))


def _spawn(home: Path, credentials: Path, role: str, name: str, args: list[str]) -> Member:
    """Start worker `name` as its enrolled role: it gets its credential file, never
    admin's URL (which is taken out of its environment)."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flpg.cli", *args, "--credentials", str(credentials)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Not reaped until it ends, so its pid (and start time) are its own meanwhile.
    return Member(role, name, proc.pid, str(log_path), process_start(proc.pid))


def node_names(num_nodes: int) -> list[str]:
    """Names of the nodes `up` starts: node-1 ... node-N."""
    return [f"node-{i + 1}" for i in range(num_nodes)]


def up(home: Path, url: str, num_nodes: int, *, started_db: bool) -> tuple[Federation, bool]:
    """Start (or complete) the local federation; returns it and whether anything started.

    Raises InvalidState if a federation with another node count is up.
    """
    if num_nodes < 1:
        raise FlpgError(f"--nodes must be >= 1, got {num_nodes}")
    from flpg.store.migrate import ensure_schema

    with _locked(home):
        current = load(home)
        if current is not None and current.alive():
            if current.num_nodes != num_nodes or current.url != url:
                raise InvalidState(
                    f"a local federation with {current.num_nodes} node(s) is already up; "
                    "run `flpg down` first to start another"
                )
            federation = current
        else:
            federation = Federation(url=url, num_nodes=num_nodes, started_db=started_db)
        ensure_schema(url)
        alive = {m.name for m in federation.alive()}
        federation.members = [m for m in federation.members if m.name in alive]
        wanted: list[tuple[str, str, list[str], dict[str, Any] | None]] = [
            ("link", "link", ["link"], None),
            ("exec", "exec", ["exec"], None),
        ]
        for i, name in enumerate(node_names(num_nodes)):
            config: dict[str, Any] | None = {"partition-id": i, "num-partitions": num_nodes}
            wanted.append(("node", name, ["node", "--name", name], config))
        started = False
        with connect(url, application_name="flpg-up") as conn:
            for role, name, args, config in wanted:
                if name not in alive:
                    cred = enrolled.ensure(conn, url, home, role, name, config)
                    federation.members.append(_spawn(home, cred, role, name, args))
                    started = True
        _save(home, federation)
    if started:
        _wait_online(federation)
    return federation, started


def _wait_online(federation: Federation) -> None:
    names = set(node_names(federation.num_nodes))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with connect(federation.url, application_name="flpg-up") as conn:
        while True:
            online = {n.name for n in store_nodes.list_all(conn) if n.status == "online"}
            if names <= online:
                return
            dead = [m for m in federation.members if not _is_ours(m)]
            if dead or time.monotonic() > deadline:
                who = dead[0] if dead else next(m for m in federation.members if m.role == "node")
                raise FlpgError(
                    f"the local federation did not come up: {who.role} {who.name} "
                    f"{'exited' if dead else 'is not online'}; see {who.log}"
                )
            time.sleep(0.1)


def down(home: Path, *, timeout: float = 20.0) -> tuple[int, Federation | None]:
    """Stop every process `up` recorded (SIGTERM, then SIGKILL after `timeout`).

    Returns how many were running and the federation that was recorded.
    """
    with _locked(home):
        federation = load(home)
        if federation is None:
            return 0, None
        alive = [m for m in federation.members if _signal(m, signal.SIGTERM)]
        _wait_gone(alive, timeout)
        for member in alive:
            _signal(member, signal.SIGKILL)
        _wait_gone(alive, KILL_WAIT)
        _state_file(home).unlink(missing_ok=True)
    return len(alive), federation


def _wait_gone(members: list[Member], timeout: float) -> None:
    """Wait up to `timeout` s until none of `members` runs, reaping those that are
    children of this process (when `up` ran here)."""
    deadline = time.monotonic() + timeout
    while True:
        for member in members:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(member.pid, os.WNOHANG)
        if not any(_is_ours(m) for m in members) or time.monotonic() >= deadline:
            return
        time.sleep(0.05)
