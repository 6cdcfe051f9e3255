"""Enrolment of every kind of participant (flpg/store/principals.py,
flpg/cli/principals.py) and the worker commands' `--credentials FILE`
(flpg/cli/_base.py, flpg/cli/workers.py), against the test cluster.

A node enrolled with labels, node config or `--virtual N` gets them from admin; its
worker attaches to those node ids (`nodes_enrolled`, `nodes_attach`) instead of
registering. Roles belong to the cluster: the `admin` fixture drops the roles its
database enrolled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flpg.cli import main
from flpg.store import nodes as store_nodes
from flpg.store import principals as store_principals
from flpg.store.credentials import load_credentials
from flpg.store.db import Connection, connect

from .conftest import register, scalar
from .test_enrolment import admin_session


@pytest.fixture
def admin(db_url: str) -> Iterator[Connection]:
    """An admin connection; afterwards every role this database enrolled is dropped."""
    with admin_session(db_url) as conn:
        yield conn


GROUP_OF = {"link": "flpg_link", "exec": "flpg_exec", "auditor": "flpg_auditor"}


def _cli(*args: str) -> Any:
    env = {"FLPG_DATABASE_URL": None}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="flpg")


def _one_line(result: Any) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return str(lines[0])


def _groups(conn: Connection, role: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
            (role,),
        )
    ]


def test_enroll_virtual_maps_one_role_to_n_node_ids_with_their_partitions(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "sim.json"
    result = _cli(
        "node", "enroll", "sim", "--virtual", "3", "--label", "region=eu",
        "--node-config", "lr=0.1", "--out", str(out), "--db", db_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "for 3 node ids sim-0 .. sim-2" in result.output
    cred = json.loads(out.read_text())
    assert (cred["kind"], cred["node"]) == ("node", "sim")
    nodes = admin.execute(
        "SELECT n.name, n.node_config, n.labels, n.status::text FROM nodes n"
        " JOIN principal_nodes pn ON pn.node_id = n.id WHERE pn.role_name = %s ORDER BY n.name",
        (cred["role"],),
    ).fetchall()
    assert nodes == [
        (
            f"sim-{i}",
            {"lr": 0.1, "partition-id": i, "num-partitions": 3},
            {"region": "eu"},
            "offline",
        )
        for i in range(3)
    ]
    # The role sees exactly its node ids, and attaches to them (online, admin's config).
    with connect(load_credentials(out)) as conn:
        enrolled = store_nodes.enrolled(conn)
        assert [name for _, name in enrolled] == ["sim-0", "sim-1", "sim-2"]
        attached = store_nodes.attach(conn)
        assert [(n.name, n.status, n.node_config["partition-id"]) for n in attached] == [
            (f"sim-{i}", "online", i) for i in range(3)
        ]
    assert store_nodes.enrolled(admin) == []  # admin registers nodes itself

    again = _cli("node", "enroll", "sim-1", "--db", db_url)
    assert again.exit_code == 5 and f"(role {cred['role']})" in again.output

    revoked = _cli("node", "revoke", "sim", "--db", db_url)
    assert revoked.exit_code == 0, revoked.output
    assert "(node ids sim-0, sim-1, sim-2) dropped" in revoked.output
    assert scalar(admin, "SELECT count(*) FROM principal_nodes") == 0
    assert scalar(admin, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (cred["role"],)) == 0
    statuses = admin.execute("SELECT DISTINCT status::text FROM nodes").fetchall()
    assert statuses == [("offline",)]


def test_enrolment_sets_the_settings_given_and_keeps_those_not_given(admin: Connection) -> None:
    register(admin, "kept")
    admin.execute("UPDATE nodes SET node_config = '{\"a\": 1}', labels = '{\"b\": 2}'")
    register(admin, "replaced")
    admin.execute(
        "UPDATE nodes SET node_config = '{\"a\": 1}', labels = '{\"b\": 2}' WHERE name = 'replaced'"
    )
    store_principals.enrol_node(admin, "kept")
    settings = store_principals.NodeSettings("replaced", {"c": 3}, {"d": "x"})
    store_principals.enrol_node(admin, "replaced", [settings])
    rows = admin.execute("SELECT name, node_config, labels FROM nodes ORDER BY name").fetchall()
    assert rows == [("kept", {"a": 1}, {"b": 2}), ("replaced", {"c": 3}, {"d": "x"})]


def test_a_virtual_enrolment_whose_node_is_taken_changes_nothing(admin: Connection) -> None:
    store_principals.enrol_node(admin, "sim-2")
    before = scalar(admin, "SELECT count(*) FROM nodes")
    nodes = [store_principals.NodeSettings(f"sim-{i}") for i in range(3)]
    with pytest.raises(Exception, match="'sim-2' is already enrolled"):
        store_principals.enrol_node(admin, "sim", nodes)
    assert scalar(admin, "SELECT count(*) FROM nodes") == before
    assert scalar(admin, "SELECT count(*) FROM principals") == 1


@pytest.mark.parametrize("kind", ["link", "exec", "auditor"])
def test_cli_enrols_and_revokes_each_service(
    kind: str, admin: Connection, db_url: str, tmp_path: Path
) -> None:
    verb = "add" if kind == "auditor" else "enroll"
    out = tmp_path / f"{kind}.json"
    result = _cli(kind, verb, "main-1", "--out", str(out), "--db", db_url)
    assert result.exit_code == 0, result.output
    cred = json.loads(out.read_text())
    role = cred["role"]
    assert role.startswith(f"flpg_{kind}_main_1_") and cred["kind"] == kind
    assert _groups(admin, role) == [GROUP_OF[kind]]
    assert admin.execute(
        "SELECT kind, user_name, run_id FROM principals WHERE role_name = %s", (role,)
    ).fetchall() == [(kind, "main-1", None)]
    with connect(load_credentials(out)) as conn:
        assert scalar(conn, "SELECT current_user") == role

    twice = _cli(kind, verb, "main-1", "--db", db_url)
    assert twice.exit_code == 5
    assert _one_line(twice).endswith(f"revoke it first with `flpg {kind} revoke main-1`")

    revoked = _cli(kind, "revoke", "main-1", "--db", db_url)
    assert revoked.exit_code == 0, revoked.output
    assert revoked.output == f"{kind} 'main-1': role {role} dropped\n"
    assert scalar(admin, "SELECT count(*) FROM principals") == 0
    assert scalar(admin, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 0
    gone = _cli(kind, "revoke", "main-1", "--db", db_url)
    assert gone.exit_code == 4 and _one_line(gone) == (
        f"flpg: error: {kind} 'main-1' is not enrolled"
    )


def test_a_revoked_worker_credential_is_refused_in_one_line(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "link.json"
    assert _cli("link", "enroll", "l", "--out", str(out), "--db", db_url).exit_code == 0
    role = json.loads(out.read_text())["role"]
    assert _cli("link", "revoke", "l", "--db", db_url).exit_code == 0
    result = _cli("link", "--credentials", str(out))
    assert result.exit_code == 6
    assert _one_line(result) == (
        f"flpg: error: credential for role {role} was refused: revoked, or the password is wrong"
    )


def test_a_credential_of_another_kind_is_refused_before_connecting(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    user = tmp_path / "alice.json"
    assert _cli("user", "add", "alice", "--out", str(user), "--db", db_url).exit_code == 0
    role = json.loads(user.read_text())["role"]
    for command, kind in (("link", "link"), ("exec", "exec"), ("node", "node")):
        name = ["--name", "n"] if command == "node" else []
        result = _cli(command, "--credentials", str(user), *name)
        assert result.exit_code == 2, result.output
        assert _one_line(result) == (
            f"flpg: error: credential file {str(user)!r} is a 'user' credential (role {role}); "
            f"`flpg {command}` needs a '{kind}' credential (from `flpg {kind} enroll`)"
        )
    node = tmp_path / "n.json"
    assert _cli("node", "enroll", "n", "--out", str(node), "--db", db_url).exit_code == 0
    shown = _cli("ls", "--credentials", str(node))
    assert shown.exit_code == 2
    assert "`flpg ls` needs a 'user' or 'auditor' credential" in _one_line(shown)


def test_an_auditor_credential_lists_every_run(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    register(admin, "node-0")
    app = str(Path(__file__).parents[2] / "examples" / "quickstart-numpy")
    submitted = _cli("run", app, "--db", db_url, "--format", "json")
    assert submitted.exit_code == 0, submitted.output
    out = tmp_path / "audit.json"
    assert _cli("auditor", "add", "eve", "--out", str(out), "--db", db_url).exit_code == 0
    assert json.loads(out.read_text())["user"] == "eve"
    listed = _cli("ls", "--credentials", str(out), "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.output)] == [
        json.loads(submitted.output)["run_id"]
    ]


@pytest.mark.parametrize("group", ["link", "exec", "node"])
def test_worker_options_before_an_admin_subcommand_are_refused(
    group: str, admin: Connection, db_url: str, tmp_path: Path
) -> None:
    cred = tmp_path / "any.json"
    result = _cli(group, "--credentials", str(cred), "enroll", "x", "--db", db_url)
    assert result.exit_code == 2
    assert _one_line(result).startswith("flpg: error: --credentials runs the worker;")
    assert scalar(admin, "SELECT count(*) FROM principals") == 0
    if group == "node":
        named = _cli("node", "--name", "a", "enroll", "b", "--db", db_url)
        assert named.exit_code == 2
        assert _one_line(named).startswith("flpg: error: --name runs the worker;")
    early = _cli(group, "--db", db_url, "enroll", "early", "--out", str(tmp_path / "e.json"))
    assert early.exit_code == 0, early.output
    assert scalar(admin, "SELECT kind FROM principals") == group


def test_revoking_one_node_id_of_a_virtual_enrolment_revokes_the_role(admin: Connection) -> None:
    nodes = [store_principals.NodeSettings(f"sim-{i}") for i in range(3)]
    enrolled = store_principals.enrol_node(admin, "sim", nodes)
    assert len(enrolled.node_ids) == 3
    revoked = store_principals.revoke(admin, "node", "sim-1")
    assert (revoked.role, revoked.node_names) == (enrolled.role, ("sim-0", "sim-1", "sim-2"))
    assert scalar(admin, "SELECT count(*) FROM principals") == 0
