"""Shared workers survive whatever app code does: hostile ServerApps and ClientApps
(apps/hostile, behaviour chosen by run config) beside a bystander run of
apps/deterministic that must finish with its known model.

Many hostile runs go to one exec at once: one is submitted with `flpg run`, the
others are copies of it made in SQL with another run config (as `flpg run` would
write them), so the test does not pay a CLI start per run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from flpg.bundle.process import describe_exit
from flpg.store.text import LINE_LIMIT, REASON_LIMIT, storable
from tests.e2e.harness import APPS, Federation, HarnessError, wait_for

pytestmark = pytest.mark.e2e

HOSTILE = APPS / "hostile"
DETERMINISTIC = APPS / "deterministic"
NASTY = "bad\x00text\x01\x07\x1b[31m red\r\x7f\udc80 end"
"""What the hostile apps raise with (see apps/hostile)."""
SECRET = "HOSTILE_SECRET"
"""Set in every worker's environment; app processes must not see it."""
BYSTANDER_W = [[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]]
BYSTANDER_B = [5.0, 5.0]
"""apps/deterministic on two nodes, 3 rounds: every array + 3 * (10*1 + 20*2) / 30."""
NEVER_KILL = {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH}
"""Ignored by default: a ServerApp that sends itself one of these goes on."""
ALWAYS_KILL = {signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGUSR1, signal.SIGABRT}


def clone(fed: Federation, template: int, **config: Any) -> int:
    """A new pending run like `template` (app, node selection) with `config` on top of
    its run config; wakes the execs."""
    run_id = int(
        fed.scalar(
            "INSERT INTO runs (app_hash, app_name, run_config) "
            "SELECT app_hash, app_name, run_config || %s::jsonb FROM runs WHERE id = %s "
            "RETURNING id",
            [json.dumps(config), template],
        )
    )
    fed.sql(
        "INSERT INTO run_nodes (run_id, node_id) SELECT %s, node_id FROM run_nodes "
        "WHERE run_id = %s",
        [run_id, template],
    )
    fed.sql("SELECT pg_notify('flpg_exec', %s)", [str(run_id)])
    return run_id


def start(fed: Federation, *, max_runs: int, nodes: int = 2) -> None:
    """Link, exec and nodes, every worker with SECRET in its environment."""
    fed.env[SECRET] = "do-not-leak"
    fed.link()
    fed.exec(max_runs=max_runs)
    for i in range(nodes):
        fed.node(f"node{i}", f"partition-id={i}")
    fed.wait_nodes_online(nodes)


def wait_all(fed: Federation, run_ids: list[int], timeout: float) -> dict[int, tuple[str, str]]:
    """Wait until every run ended and its output is logged; `{run id: (status, reason)}`."""

    def ended() -> dict[int, tuple[str, str]] | None:
        fed.check_alive()
        rows = fed.sql(
            "SELECT id, status::text, coalesce(reason, '') FROM runs WHERE id = ANY(%s) "
            "AND status IN ('finished', 'failed', 'stopped')",
            [run_ids],
        )
        return {r[0]: (r[1], r[2]) for r in rows} if len(rows) == len(run_ids) else None

    def logged() -> bool:
        # The exec logs a ServerApp's exit after the last of its output (its log is
        # written behind the run's status, which the ServerApp records itself).
        return len(run_ids) == fed.scalar(
            "SELECT count(DISTINCT run_id) FROM run_logs WHERE run_id = ANY(%s) "
            "AND stream = 'event' AND line ~ '^ServerApp (exited|was killed)'",
            [run_ids],
        )

    try:
        found: dict[int, tuple[str, str]] = wait_for(ended, timeout, "every run to end", 0.5)
        wait_for(logged, 30, "the exec to log every ServerApp's exit", 0.5)
    except HarnessError as exc:
        raise HarnessError(f"{exc}\n{fed.sql('SELECT id, status, reason FROM runs')}") from exc
    return found


def lines(fed: Federation, run_id: int, stream: str | None = None) -> list[str]:
    rows = fed.sql(
        "SELECT line FROM run_logs WHERE run_id = %s AND (%s::text IS NULL OR stream::text = %s)"
        " ORDER BY id",
        [run_id, stream, stream],
    )
    return [r[0] for r in rows]


def final(fed: Federation, run_id: int) -> Any:
    found = [line[6:] for line in lines(fed, run_id, "stdout") if line.startswith("FINAL ")]
    assert len(found) == 1, lines(fed, run_id)
    return json.loads(found[0])


def assert_bystander(fed: Federation, run_id: int) -> None:
    """The bystander run ended with apps/deterministic's known model."""
    model = final(fed, run_id)
    assert model["w"] == [pytest.approx(row) for row in BYSTANDER_W]
    assert model["b"] == pytest.approx(BYSTANDER_B)


def assert_serving(fed: Federation, template: int) -> None:
    """The exec still launches runs and the nodes still answer: a fresh run finishes."""
    run_id = clone(fed, template, server="fedavg", client="ok")
    assert wait_all(fed, [run_id], 60)[run_id] == ("finished", "")
    assert final(fed, run_id) == [1.0, 1.0, 1.0]


def test_exec_outlives_serverapps_that_raise_exit_kill_and_stop_themselves(
    federation: Federation,
) -> None:
    fed = federation
    start(fed, max_runs=100)
    bystander = fed.submit(DETERMINISTIC)
    template = fed.submit(HOSTILE, "--run-config", 'server="raise"')
    signals = {n: clone(fed, template, server="signal", signal=n) for n in range(1, 65)}
    exits = {
        code: clone(fed, template, server="exit", **{"exit-code": code}) for code in (255, 3, -1)
    }
    binary = clone(fed, template, server="binary")
    deleted = clone(fed, template, server="sleep", sleep=600.0)
    wait_for(
        lambda: fed.sql("SELECT 1 FROM runs WHERE id = %s AND status = 'running'", [deleted]),
        60,
        "the sleeping run to start",
    )
    # A run deleted under its ServerApp: recording its outcome fails (no such run).
    fed.sql("DELETE FROM runs WHERE id = %s", [deleted])

    everything = [bystander, template, binary, *signals.values(), *exits.values()]
    ended = wait_all(fed, everything, 120)

    assert ended[bystander] == ("finished", ""), ended[bystander]
    assert_bystander(fed, bystander)

    # The exception's whole message, NUL and controls made storable: the run's own
    # record and its 11 stdout lines, the line with a NUL among them.
    assert ended[template] == ("failed", storable(f"RuntimeError: {NASTY}", REASON_LIMIT))
    stdout = lines(fed, template, "stdout")
    assert stdout == [f"line {i}" for i in range(5)] + ["line 5 with a NUL \\x00 inside"] + [
        f"line {i}" for i in range(6, 11)
    ]
    assert "ServerApp exited with code 1: failed" in lines(fed, template, "event")

    for number, run_id in signals.items():
        status, reason = ended[run_id]
        log = lines(fed, run_id)
        if number == signal.SIGSTOP:  # stopped: silent; the link fails it, the exec kills it
            assert status == "failed" and "heart-beat" in reason, (number, status, reason)
            continue
        if number == signal.SIGINT:  # Python's default handler: KeyboardInterrupt
            assert (status, reason) == ("failed", "KeyboardInterrupt"), (status, reason)
            continue
        if status == "finished":
            assert number not in ALWAYS_KILL, (number, reason)
            assert f"survived signal {number}" in log, (number, log)
        else:
            assert number not in NEVER_KILL, (number, status, reason)
            assert (status, reason) == ("failed", f"ServerApp {describe_exit(-number)}"), number
    for number in (signal.SIGRTMIN + 1, 64):
        assert ended[signals[number]][1] == f"ServerApp {describe_exit(-number)}"
    assert ended[signals[signal.SIGRTMIN + 1]][1] == "ServerApp was killed by SIGRTMIN+1"

    # The stopped ServerApp did not stay: the exec terminated and reaped it.
    stopped = signals[signal.SIGSTOP]
    pid = _pid_of(fed, stopped)
    wait_for(lambda: _gone(pid), 30, "the stopped ServerApp to be killed")
    wait_for(
        lambda: any(x.startswith("ServerApp was killed by") for x in lines(fed, stopped, "event")),
        30,
        "the exec to reap the stopped ServerApp",
    )

    assert ended[exits[255]] == ("failed", "ServerApp exited with code 255")
    assert ended[exits[3]] == ("failed", "ServerApp exited with code 3")
    assert ended[exits[-1]] == ("failed", "ServerApp exited with code 255")  # -1 & 0xff

    assert ended[binary] == ("finished", "")
    out = lines(fed, binary, "stdout")
    assert out[0] == "binary \ufffd\ufffd start"
    assert out[1] == "nul \\x00 and lone \ufffd continuation"
    assert out[-1] == "binary done"
    assert lines(fed, binary, "stderr") == ["stderr \ufffd( invalid"]

    # The deleted run's ServerApp was ended too, and its failed recording only logged.
    exec_proc = next(p for p in fed.procs if p.name == "exec")
    wait_for(
        lambda: f"run {deleted}: could not record" in exec_proc.log(),
        30,
        "the exec to give up on the deleted run",
    )
    assert exec_proc.alive()
    assert_serving(fed, template)


def _pid_of(fed: Federation, run_id: int) -> int:
    started = [x for x in lines(fed, run_id, "event") if "started by" in x]
    match = re.search(r"\(pid (\d+)\)", started[0])
    assert match, started
    return int(match.group(1))


def _gone(pid: int) -> bool:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _peak_rss_kib(pid: int) -> int:
    for line in Path("/proc", str(pid), "status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_a_huge_line_is_stored_cut_and_never_held_whole(federation: Federation) -> None:
    fed = federation
    start(fed, max_runs=4)
    exec_pid = next(p for p in fed.procs if p.name == "exec").pid
    before = _peak_rss_kib(exec_pid)

    size = 50 << 20
    huge = fed.submit(HOSTILE, "--run-config", f'server="huge" huge-bytes={size}')
    bystander = fed.submit(DETERMINISTIC)
    ended = wait_all(fed, [huge, bystander], 90)
    assert ended == {huge: ("finished", ""), bystander: ("finished", "")}
    assert_bystander(fed, bystander)

    first, second = lines(fed, huge, "stdout")
    note = f" [... line of {size} bytes cut]"
    assert first == "x" * (LINE_LIMIT - len(note)) + note
    assert second == "after the huge line"
    # The exec read the 50 MB line in pieces: its peak memory grew by far less.
    grown_mib = (_peak_rss_kib(exec_pid) - before) / 1024
    assert grown_mib < 20, f"the exec's peak memory grew by {grown_mib:.0f} MiB"


class FlakyProxy:
    """A unix-socket proxy in front of the test cluster: while `down` is set it
    accepts connections and closes them at once (a database blip), noting who tried."""

    def __init__(self, directory: Path, target: str) -> None:
        self.path = directory / Path(target).name
        self.target = target
        self.down = threading.Event()
        self.refused: list[int] = []
        """Pids of the processes whose connection was refused."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.down.is_set():
                creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                self.refused.append(struct.unpack("3i", creds)[0])
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(1 << 16):
            dst.sendall(data)
    for end in (src, dst):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(federation: Federation, tmp_path: Path) -> Iterator[tuple[FlakyProxy, str]]:
    """A FlakyProxy to the federation's database and the URL that goes through it."""
    host = re.search(r"host=([^&]+)", federation.url)
    port = re.search(r"port=(\d+)", federation.url)
    assert host and port, federation.url
    socket_dir = Path(unquote(host.group(1)))
    directory = tmp_path / "proxy"
    directory.mkdir()
    flaky = FlakyProxy(directory, str(socket_dir / f".s.PGSQL.{port.group(1)}"))
    url = federation.url.replace(f"host={host.group(1)}", f"host={quote(str(directory), safe='')}")
    try:
        yield flaky, url
    finally:
        flaky.close()


def test_a_serverapp_started_during_a_database_blip_waits_for_the_database(
    federation: Federation, proxy: tuple[FlakyProxy, str]
) -> None:
    fed = federation
    flaky, proxied = proxy
    fed.env[SECRET] = "do-not-leak"
    fed.link()
    fed.node("node0", "partition-id=0")  # `flpg run` needs a registered node
    fed.wait_nodes_online(1)
    direct = fed.env["FLPG_DATABASE_URL"]
    fed.env["FLPG_DATABASE_URL"] = proxied  # the exec, and so its ServerApps, go through it
    fed.exec()
    fed.env["FLPG_DATABASE_URL"] = direct
    listening = "SELECT 1 FROM pg_stat_activity WHERE application_name = 'flpg-exec-listen'"
    wait_for(lambda: fed.sql(listening), 30, "the exec to listen")

    flaky.down.set()
    run_id = fed.submit(HOSTILE, "--run-config", 'server="env"')

    def runner_refused() -> bool:
        runners = [p for p in flaky.refused if "flpg.exec.runner" in _cmdline(p)]
        return len(runners) >= 4  # its heartbeat's and its loading's, each tried again

    wait_for(runner_refused, 30, "the ServerApp to retry connecting")
    flaky.down.clear()

    assert wait_all(fed, [run_id], 60)[run_id] == ("finished", "")
    log = lines(fed, run_id, "stderr")
    assert any(f"flpg-serverapp-{run_id}: database unavailable" in x for x in log), (
        lines(fed, run_id),
        fed.logs(),
    )
    # Only an allowlisted environment reached the ServerApp.
    names = json.loads(next(x for x in lines(fed, run_id, "stdout") if x.startswith("ENV "))[4:])
    assert SECRET not in names
    assert {"PATH", "FLPG_DATABASE_URL", "FLPG_HEARTBEAT"} <= set(names)


def _cmdline(pid: int) -> str:
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def replies(fed: Federation, run_id: int) -> dict[int, tuple[int | None, str | None, Any, Any]]:
    """`{partition id: (error code, error reason, metrics, configs)}` of a run's replies."""
    rows = fed.sql(
        "SELECT (n.node_config->>'partition-id')::int, m.error_code, m.error_reason, "
        "m.metrics, m.configs FROM messages m JOIN nodes n ON n.id = m.src_node_id "
        "WHERE m.run_id = %s AND m.reply_to IS NOT NULL",
        [run_id],
    )
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def test_node_outlives_hostile_clientapps(federation: Federation) -> None:
    fed = federation
    start(fed, max_runs=20)
    node_pids = {p.name: p.pid for p in fed.procs if p.name.startswith("node-")}
    bystander = fed.submit(DETERMINISTIC)
    template = fed.submit(HOSTILE, "--run-config", 'server="fedavg" client="raise"')
    runs = {
        "metric-nul": clone(fed, template, client="metric-nul"),
        "config-nul": clone(fed, template, client="config-nul"),
        "binary": clone(fed, template, client="binary"),
        "protocol": clone(fed, template, client="protocol"),
        "stop": clone(fed, template, client="signal", signal=int(signal.SIGSTOP), ttl=10.0),
    }
    killers = (signal.SIGSEGV, signal.SIGRTMIN + 1)
    for number in killers:
        runs[f"signal {number}"] = clone(fed, template, client="signal", signal=int(number))
    ended = wait_all(fed, [bystander, template, *runs.values()], 90)

    assert ended[bystander] == ("finished", "")
    assert_bystander(fed, bystander)
    # Every hostile run finished on partition 0's reply alone (or both, where the
    # misbehaviour was harmless): the node answered its other messages.
    for run_id in (template, *runs.values()):
        assert ended[run_id] == ("finished", ""), (run_id, ended[run_id])
        assert final(fed, run_id) == [1.0, 1.0, 1.0]
        assert replies(fed, run_id)[0][:2] == (None, None)

    raised = replies(fed, template)[1]
    assert raised[:2] == (1, storable(f"ValueError: {NASTY}", REASON_LIMIT))
    code, reason, _, _ = replies(fed, runs["metric-nul"])[1]
    assert code == 1 and "'loss\\x00' holds a character the database cannot store" in (reason or "")
    code, _, _, configs = replies(fed, runs["config-nul"])[1]
    assert code is None  # stored, and exactly: as base64 where jsonb cannot hold the text
    stored = base64.b64decode(configs["note"]["text"]["$str"])
    assert stored.decode("utf-8", "surrogatepass") == NASTY
    assert replies(fed, runs["binary"])[1][:2] == (None, None)
    assert replies(fed, runs["protocol"])[1][:2] == (None, None)
    # ... and its node worker skipped the garbage and still learnt how it went.
    node_logs = "".join(p.log() for p in fed.procs if p.name.startswith("node-"))
    assert "skipped a line of" in node_logs and "ClientApp process sent" in node_logs
    instruction = fed.scalar(
        "SELECT m.id FROM messages m JOIN nodes n ON n.id = m.dst_node_id WHERE m.run_id = %s "
        "AND m.reply_to IS NULL AND n.node_config->>'partition-id' = '1'",
        [runs["protocol"]],
    )
    assert re.search(rf"train message {instruction} for node \d+ done", node_logs), node_logs
    # No ClientApp saw the workers' secret (every reply without an error says so).
    leaked = fed.sql(
        "SELECT DISTINCT metrics->'metrics'->'leaked' FROM messages WHERE reply_to IS NOT NULL "
        "AND error_code IS NULL AND run_id <> %s",
        [bystander],
    )
    assert leaked == [(0,)]
    code, reason, _, _ = replies(fed, runs["stop"])[1]
    assert code is not None and "expired" in (reason or ""), reason
    for number in killers:
        code, reason, _, _ = replies(fed, runs[f"signal {number}"])[1]
        assert code is not None and describe_exit(-number) in (reason or ""), (number, reason)

    # The same node workers serve on.
    assert {p.name: p.pid for p in fed.procs if p.name.startswith("node-")} == node_pids
    assert all(p.alive() for p in fed.procs)
    assert_serving(fed, template)
