"""A federation whose every participant is a separate OS process reaching the
embedded cluster over TCP with TLS, as the role admin enrolled for it.

The module serves a cluster of its own (`flpg db serve --listen 127.0.0.1:PORT`,
its CA made by flpg) under a fresh /tmp directory. Admin, on the cluster's unix
socket, enrols a link, an exec, user alice and nodes node0..node2 with `--host
localhost:PORT` (a name of the server certificate, as verify-full needs). Each worker
and alice's commands get `--credentials FILE` and nothing else: no --db, no
FLPG_DATABASE_URL, and an FLPG_HOME of their own where no cluster exists.

Two runs: apps/deterministic on the three nodes finishes with the exactly known
FedAvg model; then apps/gated, held in round 2 while admin revokes node2, which is
shut out (its worker exits 6 with one line, its instruction gets a NODE_UNAVAILABLE
error reply) while the run finishes with node0 and node1. The tests share the
module's federation and run in file order: the last one revokes node2.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flpg.app.message import ErrorCode, error_code_to_stored
from flpg.local.cluster import Cluster
from tests._binaries import require_bindir
from tests.db._served import flpg_cli, free_port
from tests.e2e.conftest import make_env
from tests.e2e.harness import APPS, CliResult, Federation, Proc, wait_for
from tests.e2e.test_federated_run import expected_final_arrays, final_line

pytestmark = pytest.mark.e2e

NODES = 3
CERT_HOST = "localhost"
"""The host credential URLs name: one of the server certificate's names
(test_tls_listen connects to it with verify-full)."""
WORKER_APPS = (
    "flpg-link",
    "flpg-exec",
    "flpg-exec-listen",
    "flpg-exec-logs",
    "flpg-node",
    "flpg-node-work",
    "flpg-node-listen",
    "flpg-node-logins",
)
RUN_ROLES_OF = "SELECT role_name FROM run_roles WHERE run_id = %s AND made_for = %s"
REFUSED = "flpg: error: credential for role {} was refused: revoked, or the password is wrong"

Arrays = dict[str, np.ndarray]


def fedavg_outcomes(initial: Arrays, rounds: Sequence[Sequence[int]]) -> list[Arrays]:
    """Every model FedAvg can end with when, in each round, the nodes of the given
    partition ids reply in any order: each adds (partition-id + 1) to every array,
    weight 10 * (partition-id + 1) (apps/deterministic, apps/gated with step 1), summed
    in float64 in arrival order and divided by the total weight, as flpg's aggregator
    does. Distinct results only (float addition commutes, so two replies give one)."""
    models = [initial]
    for partitions in rounds:
        seen: dict[bytes, Arrays] = {}
        for model, order in itertools.product(models, itertools.permutations(partitions)):
            new: Arrays = {}
            for name, value in model.items():
                acc = np.zeros(value.shape, dtype=np.float64)
                total = 0.0
                for pid in order:
                    weight = float(10 * (pid + 1))
                    acc += (value + (pid + 1)) * weight
                    total += weight
                new[name] = acc / total
            seen[b"".join(a.tobytes() for a in new.values())] = new
        models = list(seen.values())
    return models


def assert_one_of(final: Arrays, outcomes: list[Arrays]) -> None:
    """`final` is bit for bit one of `outcomes`."""
    assert any(
        list(final) == list(o) and all(np.array_equal(final[k], o[k]) for k in o) for o in outcomes
    ), (final, outcomes)


@dataclass
class TlsFederation:
    """Admin's harness (`fed`: the cluster's socket, the CLI as admin) and what the
    participants were given."""

    fed: Federation
    port: int
    creds: dict[str, Path]
    roles: dict[str, str]
    workers: dict[str, Proc]
    env: dict[str, str]
    """A participant's environment: no FLPG_DATABASE_URL, an FLPG_HOME of its own."""

    def as_participant(self, *args: str, timeout: float = 60) -> CliResult:
        """`flpg ARGS` in a participant's environment (exit code not checked)."""
        return self.fed.cli(*args, env=self.env, timeout=timeout, check=False)


def _enrol(fed: Federation, port: int, name: str, *args: str) -> Path:
    """`flpg ARGS --host localhost:PORT --out FILE` as admin; returns FILE."""
    path = fed.workdir / "credentials" / f"{name}.json"
    out = fed.cli(*args, "--host", f"{CERT_HOST}:{port}", "--out", str(path)).stdout
    assert f"connects over TLS to {CERT_HOST})" in out, out
    cred = json.loads(path.read_text())
    assert cred["url"].startswith(f"postgresql://{cred['role']}:")
    assert f"@{CERT_HOST}:{port}/" in cred["url"] and "sslmode=verify-full" in cred["url"]
    assert cred["ca_cert"], cred["kind"]
    return path


def _start(tf: TlsFederation, name: str, *args: str) -> Proc:
    """Start a worker in a participant's environment."""
    admin_env = tf.fed.env
    tf.fed.env = tf.env  # carries the harness's tag: teardown finds their children
    try:
        proc = tf.fed.start(name, *args)
    finally:
        tf.fed.env = admin_env
    tf.workers[name] = proc
    return proc


def _setup(fed: Federation, port: int) -> TlsFederation:
    """Enrol everyone, start the link, the exec and the nodes, wait for the nodes."""
    env = {k: v for k, v in fed.env.items() if k != "FLPG_DATABASE_URL"}
    env["FLPG_HOME"] = str(fed.workdir / "participant-home")
    tf = TlsFederation(fed, port, {}, {}, {}, env)
    (fed.workdir / "credentials").mkdir()
    # Each worker starts as soon as it is enrolled (their start-ups overlap).
    for kind in ("link", "exec"):
        tf.creds[kind] = _enrol(fed, port, kind, kind, "enroll", "main")
        _start(tf, kind, kind, "--credentials", str(tf.creds[kind]))
    for i in range(NODES):
        name, config = f"node{i}", f"partition-id={i} num-partitions={NODES}"
        tf.creds[name] = _enrol(fed, port, name, "node", "enroll", name, "--node-config", config)
        _start(tf, name, "node", "--credentials", str(tf.creds[name]), "--name", name)
    tf.creds["alice"] = _enrol(fed, port, "alice", "user", "add", "alice")
    for name, path in tf.creds.items():
        tf.roles[name] = json.loads(path.read_text())["role"]
    fed.wait_nodes_online(NODES)
    return tf


@pytest.fixture(scope="module")
def tls_fed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsFederation]:
    """The served cluster, its enrolled participants and their running workers.
    Teardown stops every process (none may be left; when every test passed, each
    exits 0 on SIGTERM) and destroys the cluster."""
    require_bindir()
    failed = request.session.testsfailed
    home = Path(tempfile.mkdtemp(prefix="flpg-tls-fed-", dir="/tmp"))
    os.chmod(home, 0o711)  # as root, the server account must pass through
    cluster = Cluster(home / "postgres")
    fed: Federation | None = None
    try:
        port = free_port()
        served = flpg_cli(home, "db", "serve", "--listen", f"127.0.0.1:{port}")
        assert served.returncode == 0, served.stderr
        workdir = tmp_path_factory.mktemp("tls-federation")
        admin_env = {**make_env(cluster.url(), workdir), "FLPG_HOME": str(home)}
        fed = Federation(admin_env, workdir)
        yield _setup(fed, port)
    finally:
        try:
            if fed is not None:
                report = fed.stop_all()
                assert not report.left, f"processes left running: {report.left}\n{fed.logs()}"
                if request.session.testsfailed == failed:
                    assert report.clean, f"unclean shutdown: {report}\n{fed.logs()}"
        finally:
            try:
                cluster.destroy()
            finally:
                shutil.rmtree(home, ignore_errors=True)


def _sessions(fed: Federation, where: str, *params: object) -> list[tuple[str, str, bool, bool]]:
    """(role, application, over TCP, with TLS) of this database's client sessions
    matching `where`."""
    return fed.sql(
        "SELECT a.usename, a.application_name, a.client_addr IS NOT NULL, s.ssl"
        " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
        " WHERE a.datname = current_database() AND a.backend_type = 'client backend'"
        f" AND {where}",
        list(params),
    )


def _kind(tf: TlsFederation, role: str) -> str:
    """Which participant (link, exec, node, user) `role` was enrolled as."""
    name = next(n for n, r in tf.roles.items() if r == role)
    return "user" if name == "alice" else name.rstrip("0123456789")


def test_every_worker_connects_as_its_own_role_over_tls(tls_fed: TlsFederation) -> None:
    tf, fed = tls_fed, tls_fed.fed
    workers = {tf.roles[n] for n in ("link", "exec", *(f"node{i}" for i in range(NODES)))}

    def connected() -> list[tuple[str, str, bool, bool]]:
        rows = _sessions(fed, "a.application_name = ANY(%s)", list(WORKER_APPS))
        return rows if {r[0] for r in rows} >= workers else []

    rows = wait_for(connected, 30, "a session of every worker")
    for role, application, tcp, ssl in rows:
        assert (tcp, ssl) == (True, True), (role, application)
        assert application.startswith(f"flpg-{_kind(tf, role)}"), (role, application)
    # Admin (this test's queries, the CLI) is the only role on the unix socket.
    assert {r[0] for r in _sessions(fed, "a.client_addr IS NULL")} == {"flpg"}
    # No participant used an embedded cluster of its own.
    assert not (Path(tf.env["FLPG_HOME"]) / "postgres").exists()


def test_a_fedavg_run_submitted_by_alice_finishes_with_the_exact_model(
    tls_fed: TlsFederation,
) -> None:
    tf, fed = tls_fed, tls_fed.fed
    alice = str(tf.creds["alice"])
    stream = tf.as_participant(
        "run", str(APPS / "deterministic"), "--credentials", alice, "--stream", timeout=90
    )
    assert stream.returncode == 0, f"{stream}\n{fed.logs()}"
    lines = stream.stdout.splitlines()
    assert lines[0].startswith("submitted run ") and f"{NODES} nodes" in lines[0], stream
    run_id = int(lines[0].split()[2])
    assert lines[-1] == f"run {run_id} finished", stream

    initial = {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.zeros(2)}
    two = fedavg_outcomes(initial, [[0, 1]] * 3)
    assert len(two) == 1  # the helper agrees with test_federated_run's two-node result
    assert_one_of(expected_final_arrays(), two)
    assert_one_of(final_line(stream.stdout), fedavg_outcomes(initial, [list(range(NODES))] * 3))

    # alice's role submitted it; its ServerApp wrote every instruction and the nodes'
    # ClientApps every reply, each as a run role made for its exec or node.
    assert fed.scalar("SELECT submitted_by FROM runs WHERE id = %s", [run_id]) == tf.roles["alice"]
    writers = fed.sql(
        "SELECT m.reply_to IS NULL, rr.kind, rr.made_for, count(*)"
        " FROM messages m LEFT JOIN run_roles rr ON rr.role_name = m.created_by"
        " WHERE m.run_id = %s GROUP BY 1, 2, 3",
        [run_id],
    )
    nodes = [(False, "clientapp", tf.roles[f"node{i}"], 3) for i in range(NODES)]
    assert sorted(writers) == sorted([(True, "serverapp", tf.roles["exec"], 3 * NODES), *nodes])


def _round_claimed(fed: Federation, run_id: int, server_round: int) -> int:
    count: int = fed.scalar(
        "SELECT count(*) FROM messages WHERE run_id = %s AND reply_to IS NULL"
        " AND group_id = %s AND state = 'claimed'",
        [run_id, str(server_round)],
    )
    return count


def _assert_run_roles_over_tls(tf: TlsFederation, run_id: int) -> None:
    """The run's ServerApp and each node's ClientApp process are connected as run
    roles of their own, over TCP with TLS."""
    fed = tf.fed
    made = fed.sql("SELECT role_name, kind, made_for FROM run_roles WHERE run_id = %s", [run_id])
    wanted = {"exec"} | {f"node{i}" for i in range(NODES)}
    assert sorted(m[2] for m in made) == sorted(tf.roles[n] for n in wanted), made
    roles = {m[0]: m[1] for m in made}

    def connected() -> list[tuple[str, str, bool, bool]]:
        rows = _sessions(fed, "a.usename = ANY(%s)", list(roles))
        return rows if {r[0] for r in rows} == set(roles) else []

    rows = wait_for(connected, 30, f"sessions of every run role of run {run_id}")
    for role, application, tcp, ssl in rows:
        assert (tcp, ssl) == (True, True), (role, application)
        assert application.startswith(f"flpg-{roles[role]}-{run_id}"), (role, application)


def _wait_exit(proc: Proc, timeout: float = 30) -> int:
    """The exit code of a worker that must exit by itself."""
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.exit_code = proc.popen.wait(5)
    return proc.exit_code


def test_a_node_revoked_mid_run_is_shut_out_and_the_run_finishes_without_it(
    tls_fed: TlsFederation,
) -> None:
    tf, fed = tls_fed, tls_fed.fed
    gate = fed.workdir / "gate"
    submitted = tf.as_participant(
        "run",
        str(APPS / "gated"),
        "--credentials",
        str(tf.creds["alice"]),
        "--format",
        "json",
        "--run-config",
        f'min-nodes=2 gate="{gate}"',
    )
    assert submitted.returncode == 0, submitted
    run_id = int(submitted.json()["run_id"])
    wait_for(lambda: _round_claimed(fed, run_id, 2) == NODES, 60, "round 2 held on every node")
    _assert_run_roles_over_tls(tf, run_id)

    role = tf.roles["node2"]
    revoked = fed.cli("node", "revoke", "node2")
    assert (
        revoked.stdout
        == f"node 'node2': role {role} dropped; 1 undelivered instruction(s) failed\n"
    )
    node2 = tf.workers["node2"]
    assert _wait_exit(node2) == 6, node2.log()
    assert node2.log().strip().splitlines()[-1] == REFUSED.format(role)
    # Its ClientApp process went with it (its run role's sessions ended).
    app_roles = [r[0] for r in fed.sql(RUN_ROLES_OF, [run_id, role])]
    assert len(app_roles) == 1
    wait_for(
        lambda: not _sessions(fed, "a.usename = ANY(%s)", app_roles), 10, "node2's ClientApp gone"
    )
    # ... and that role was dropped with node2's: nobody can log in with it any more.
    assert fed.sql("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [app_roles]) == []
    assert (
        fed.sql(
            "SELECT role_name FROM run_roles WHERE role_name = ANY(%s) AND dropped_at IS NULL",
            [app_roles],
        )
        == []
    )
    # Its round-2 instruction was answered at once with an error reply.
    errors = fed.sql(
        "SELECT i.group_id, r.error_code FROM messages i"
        " JOIN nodes n ON n.id = i.dst_node_id AND n.name = 'node2'"
        " LEFT JOIN messages r ON r.reply_to = i.id WHERE i.run_id = %s ORDER BY i.id",
        [run_id],
    )
    assert errors == [("1", None), ("2", error_code_to_stored(ErrorCode.NODE_UNAVAILABLE))]

    gate.touch()
    assert fed.wait_run(run_id, timeout=60)["status"] == "finished", fed.log_of(run_id)
    log = fed.log_of(run_id)
    final = [json.loads(x[6:]) for x in log.splitlines() if x.startswith("FINAL ")]
    assert len(final) == 1, log
    outcomes = fedavg_outcomes({"w": np.zeros(3)}, [[0, 1, 2], [0, 1], [0, 1]])
    assert_one_of({"w": np.asarray(final[0], dtype=np.float64)}, outcomes)
    assert fed.sql(
        "SELECT round, phase, num_replies, num_failures FROM round_history"
        " WHERE run_id = %s ORDER BY round, phase",
        [run_id],
    ) == [(1, "train", 3, 0), (2, "train", 2, 1), (3, "train", 2, 0)]

    # node2's credential no longer logs in: one line, exit 6.
    again = tf.as_participant("node", "--credentials", str(tf.creds["node2"]), "--name", "node2")
    assert (again.returncode, again.stderr) == (6, REFUSED.format(role) + "\n"), again
