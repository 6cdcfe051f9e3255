"""A complete local federation in the background: `flpg up` / `flpg down`.

`up` starts one link, one exec and N node workers as detached processes on one
database, records them in `<flpg home>/federation.json`, and waits until the
nodes are online. `down` stops exactly the processes `up` recorded (and the
embedded cluster, if `up` was what started it). Both hold a lock, so two at
once never double-start.
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

from flpg.db import connect
from flpg.errors import FlpgError, InvalidState
from flpg.settings import DATABASE_URL_ENV
from flpg.store import nodes as store_nodes

STARTUP_TIMEOUT = 60.0


@dataclass
class Member:
    role: str
    name: str
    pid: int
    log: str


@dataclass
class Federation:
    url: str
    num_nodes: int
    started_db: bool
    members: list[Member] = field(default_factory=list)

    def alive(self) -> list[Member]:
        """The recorded processes that still run flpg."""
        return [m for m in self.members if _is_flpg_process(m.pid)]


def _is_flpg_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    return b"flpg" in cmdline


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
    """The recorded federation, or None if none was started."""
    path = _state_file(home)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    members = [Member(**m) for m in doc.pop("members")]
    return Federation(members=members, **doc)


def _save(home: Path, federation: Federation) -> None:
    tmp = _state_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(federation), indent=2))
    tmp.replace(_state_file(home))


def _spawn(home: Path, url: str, role: str, name: str, args: list[str]) -> Member:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    env = {**os.environ, DATABASE_URL_ENV: url}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flpg.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Member(role, name, proc.pid, str(log_path))


def node_names(num_nodes: int) -> list[str]:
    """Names of the nodes `up` starts: node-1 ... node-N."""
    return [f"node-{i + 1}" for i in range(num_nodes)]


def up(home: Path, url: str, num_nodes: int, *, started_db: bool) -> tuple[Federation, bool]:
    """Start (or complete) the local federation; returns it and whether anything started.

    Raises InvalidState if a federation with another node count is up.
    """
    if num_nodes < 1:
        raise FlpgError(f"--nodes must be >= 1, got {num_nodes}")
    from flpg.migrate import ensure_schema

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
        wanted: list[tuple[str, str, list[str]]] = [
            ("link", "link", ["link"]),
            ("exec", "exec", ["exec"]),
        ]
        for i, name in enumerate(node_names(num_nodes)):
            config = f"partition-id={i} num-partitions={num_nodes}"
            wanted.append(("node", name, ["node", "--name", name, "--node-config", config]))
        started = False
        for role, name, args in wanted:
            if name not in alive:
                federation.members.append(_spawn(home, url, role, name, args))
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
            dead = [m for m in federation.members if not _is_flpg_process(m.pid)]
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
        alive = federation.alive()
        for member in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_is_flpg_process(m.pid) for m in alive) and time.monotonic() < deadline:
            _reap_children()
            time.sleep(0.05)
        for member in alive:
            if _is_flpg_process(member.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, signal.SIGKILL)
        _reap_children()
        _state_file(home).unlink(missing_ok=True)
    return len(alive), federation


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
