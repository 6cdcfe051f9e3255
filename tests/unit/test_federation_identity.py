"""`flpg down` signals only the processes `flpg up` started: a recorded pid now held
by an unrelated process (even one with "flpg" in its command line) is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flpg.local import federation
from flpg.local.federation import process_start

IMPOSTOR = "import time; print('ready', flush=True); time.sleep(300)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(300)"
)


def spawn(code: str, *argv: str) -> subprocess.Popen[str]:
    """A real process, started in its own session, ready once it printed so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def record(home: Path, members: list[dict[str, object]]) -> None:
    """Write the federation record as `flpg up` does."""
    home.mkdir(parents=True, exist_ok=True)
    doc = {"url": "postgresql:///x", "num_nodes": 1, "started_db": False, "members": members}
    (home / "federation.json").write_text(json.dumps(doc))


def member(name: str, pid: int, start: str | None) -> dict[str, object]:
    doc: dict[str, object] = {"role": "node", "name": name, "pid": pid, "log": "/dev/null"}
    if start is not None:
        doc["start"] = start
    return doc


def running(pid: int) -> bool:
    return process_start(pid) is not None  # None: gone, or a zombie


def test_a_recycled_pid_is_never_signalled(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # `up` started a process and recorded it; it ended; its pid now belongs to an
    # unrelated process (a user's, with "flpg" in its command line, as the old check
    # looked for). The kernel does not recycle a pid on demand, so the test records
    # the unrelated process's pid with the identity the ended one had: the same boot,
    # an earlier start. (Two processes forked within one clock tick share a start
    # time, so another process's identity would not do: only a pid and its start
    # time together name a process.)
    impostor = spawn(IMPOSTOR, "flpg", "node", "--name", "node-1")
    procs.append(impostor)
    assert b"flpg" in Path(f"/proc/{impostor.pid}/cmdline").read_bytes()
    identity = process_start(impostor.pid)
    assert identity is not None
    boot, ticks = identity.rsplit(":", 1)
    ended_identity = f"{boot}:{int(ticks) - 1}"
    record(tmp_path, [member("node-1", impostor.pid, ended_identity)])

    stopped, fed = federation.down(tmp_path, timeout=5)

    assert stopped == 0
    assert fed is not None and [m.pid for m in fed.members] == [impostor.pid]
    assert running(impostor.pid) and impostor.poll() is None
    assert not (tmp_path / "federation.json").exists()


def test_a_record_without_identity_is_never_signalled(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """A record written by an older flpg has pids only: they are not trusted."""
    other = spawn(IMPOSTOR, "flpg")
    procs.append(other)
    record(tmp_path, [member("node-1", other.pid, None)])
    assert federation.down(tmp_path, timeout=5)[0] == 0
    assert running(other.pid)


def test_the_recorded_processes_are_stopped_even_when_they_ignore_sigterm(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    polite = spawn(IMPOSTOR)
    stubborn = spawn(STUBBORN)
    bystander = spawn(IMPOSTOR, "flpg")
    procs.extend([polite, stubborn, bystander])
    record(
        tmp_path,
        [
            member("link", polite.pid, process_start(polite.pid)),
            member("exec", stubborn.pid, process_start(stubborn.pid)),
        ],
    )
    stopped, _ = federation.down(tmp_path, timeout=0.5)
    assert stopped == 2
    assert not running(polite.pid)
    assert not running(stubborn.pid)  # SIGKILL after the timeout
    assert running(bystander.pid)


def test_the_identity_survives_odd_process_names(tmp_path: Path) -> None:
    """/proc/PID/stat puts the command name in parentheses; a name holding ") (" and
    spaces must not shift the fields."""
    odd = tmp_path / "a) b (c d"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", IMPOSTOR], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        identity = process_start(proc.pid)
        assert identity is not None and identity == process_start(proc.pid)
        assert identity != process_start(os.getpid())
        boot, ticks = identity.rsplit(":", 1)
        assert (
            ticks.isdigit() and boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        )
    finally:
        proc.kill()
        proc.wait()
    assert process_start(proc.pid) is None
