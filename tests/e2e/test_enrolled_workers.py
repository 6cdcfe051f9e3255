"""Workers as their own enrolled roles: `flpg link`, `flpg exec --credentials FILE`
and `flpg node --credentials FILE [--name NAME] [--virtual N]` connect as the login
roles admin
enrolled (`flpg link enroll`, `flpg node enroll`); the node worker attaches to the
node ids, labels and node config admin set instead of registering.

The exec still connects as admin: a ServerApp launched by an exec role cannot yet
reach its run's rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tests.e2e.harness import APPS, Federation
from tests.e2e.test_federated_run import expected_final_arrays, final_line
from tests.e2e.test_multitenancy import expected_final, final_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def roles(flpg_env: dict[str, str]) -> Iterator[None]:
    """Drops every role the test's database enrolled, once the test and (when the
    test asks for this fixture before `federation`) its processes are done: roles
    belong to the cluster, not to the test's database."""
    yield
    with psycopg.connect(flpg_env["FLPG_DATABASE_URL"], autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT role_name FROM principals")]
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
            (names,),
        )
        for name in names:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def _enrol(fed: Federation, *args: str) -> Path:
    """`flpg KIND enroll|add NAME ...`; returns the credential file."""
    path = fed.workdir / f"{args[0]}-{args[2]}.json"
    fed.cli(*args, "--out", str(path))
    return path


def _role(fed: Federation, name: str) -> str:
    role: str = fed.scalar(
        "SELECT pn.role_name FROM principal_nodes pn JOIN nodes n ON n.id = pn.node_id"
        " WHERE n.name = %s",
        [name],
    )
    return role


def _connected(fed: Federation, applications: tuple[str, ...]) -> set[str]:
    rows = fed.sql(
        "SELECT DISTINCT usename FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = ANY(%s)",
        [list(applications)],
    )
    return {r[0] for r in rows}


def test_a_fedavg_run_with_an_enrolled_link_exec_and_nodes(
    roles: None, federation: Federation
) -> None:
    fed = federation
    config = "partition-id={} num-partitions=2"
    nodes = [
        _enrol(fed, "node", "enroll", f"node{i}", "--node-config", config.format(i))
        for i in range(2)
    ]
    link = _enrol(fed, "link", "enroll", "main")
    fed.start("link", "link", "--credentials", str(link))
    exec_cred = _enrol(fed, "exec", "enroll", "main")
    fed.start("exec", "exec", "--credentials", str(exec_cred))
    for i, cred in enumerate(nodes):
        # node1 is named by its credential file alone.
        name = ("--name", f"node{i}") if i == 0 else ()
        fed.start(f"node{i}", "node", "--credentials", str(cred), *name)
    online = fed.wait_nodes_online(2)
    assert {(n["name"], n["node_config"]["partition-id"]) for n in online} == {
        ("node0", 0),
        ("node1", 1),
    }

    run_id = fed.submit(APPS / "deterministic")
    assert fed.wait_run(run_id, timeout=90)["status"] == "finished", fed.logs()
    final = final_line(fed.cli("log", str(run_id)).stdout)
    for name, value in expected_final_arrays().items():
        assert np.array_equal(final[name], value), (name, final[name], value)
    # The link and the node workers held their own roles' sessions, no admin one.
    link_role = fed.scalar("SELECT role_name FROM principals WHERE kind = 'link'")
    assert _connected(fed, ("flpg-link",)) == {link_role}
    exec_role = fed.scalar("SELECT role_name FROM principals WHERE kind = 'exec'")
    assert _connected(fed, ("flpg-exec", "flpg-exec-listen")) == {exec_role}
    assert _connected(fed, ("flpg-node", "flpg-node-work")) == {
        _role(fed, "node0"),
        _role(fed, "node1"),
    }


def test_an_enrolled_node_serves_only_its_own_name_and_settings(
    roles: None, federation: Federation
) -> None:
    fed = federation
    cred = _enrol(fed, "node", "enroll", "site", "--label", "region=eu")
    role = _role(fed, "site")

    def refused(*args: str) -> tuple[int, str]:
        result = fed.cli("node", "--credentials", str(cred), *args, check=False, timeout=30)
        assert len(result.stderr.strip().splitlines()) == 1, result
        return result.returncode, result.stderr.strip()

    assert refused("--name", "other") == (
        6,
        f"flpg: error: role {role} is enrolled for node 'site', not 'other'",
    )
    assert refused("--name", "site", "--virtual", "2") == (
        6,
        f"flpg: error: role {role} is enrolled for node 'site', not nodes 'site-0', 'site-1'",
    )
    code, line = refused("--name", "site", "--label", "region=us")
    assert code == 2
    assert "labels and node config of an enrolled node are set by admin at enrolment" in line
    code, line = refused("--name", "site", "--node-config", "partition-id=3")
    assert code == 2 and "remove --label and --node-config" in line
    assert fed.scalar("SELECT labels->>'region' FROM nodes WHERE name = 'site'") == "eu"
    assert fed.scalar("SELECT status::text FROM nodes WHERE name = 'site'") == "offline"

    fed.cli("node", "revoke", "site")
    assert refused("--name", "site") == (
        6,
        f"flpg: error: credential for role {role} was refused: revoked, or the password is wrong",
    )


def test_a_virtual_enrolment_is_served_by_one_worker_with_its_partitions(
    roles: None, federation: Federation
) -> None:
    fed = federation
    n = 3
    cred = _enrol(fed, "node", "enroll", "sim", "--virtual", str(n))
    fed.link()
    fed.exec()
    fed.start("sim", "node", "--credentials", str(cred), "--name", "sim", "--virtual", str(n))
    nodes = fed.wait_nodes_online(n)
    assert sorted((x["name"], x["node_config"]["partition-id"]) for x in nodes) == [
        (f"sim-{i}", i) for i in range(n)
    ]
    role = _role(fed, "sim-0")
    assert {_role(fed, f"sim-{i}") for i in range(n)} == {role}

    run_id = fed.submit(APPS / "tenant", "--run-config", f"min-nodes={n}")
    assert fed.wait_run(run_id, timeout=120)["status"] == "finished", fed.logs()
    assert final_of(fed, run_id, "FINAL") == pytest.approx(
        [expected_final(list(range(n)), 1.0)] * 3
    )

    # Revoking the one enrolment revokes all its node ids at once; the worker,
    # refused when it reconnects, exits with one line (exit 6).
    proc = next(p for p in fed.procs if p.name == "sim")
    fed.cli("node", "revoke", "sim")
    statuses = fed.sql("SELECT DISTINCT status::text FROM nodes")
    assert statuses == [("offline",)]
    deadline = time.monotonic() + 30
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.exit_code = proc.popen.wait(5)
    assert proc.exit_code == 6, proc.log()
    assert f"credential for role {role} was refused" in proc.log().strip().splitlines()[-1]


@pytest.mark.parametrize("kind", ["link", "exec"])
def test_a_running_worker_whose_role_is_revoked_exits_with_one_line(
    kind: str, roles: None, federation: Federation
) -> None:
    fed = federation
    cred = _enrol(fed, kind, "enroll", "w")
    role = fed.scalar("SELECT role_name FROM principals WHERE kind = %s", [kind])
    proc = fed.start(kind, kind, "--credentials", str(cred))
    deadline = time.monotonic() + 30
    while role not in _connected(fed, (f"flpg-{kind}",)):
        fed.check_alive()
        assert time.monotonic() < deadline, fed.logs()
        time.sleep(0.2)

    fed.cli(kind, "revoke", "w")
    deadline = time.monotonic() + 30
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.exit_code = proc.popen.wait(5)
    assert proc.exit_code == 6, proc.log()
    assert proc.log().strip().splitlines()[-1] == (
        f"flpg: error: credential for role {role} was refused: revoked, or the password is wrong"
    )
