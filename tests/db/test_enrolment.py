"""Enrolment and revocation (flpg/store/principals.py, flpg/cli/principals.py) and
credential files (flpg/store/credentials.py), against the test cluster.

Roles belong to the cluster, not to a test's database: each test drops the roles
its database enrolled. The test cluster trusts only its admin on the unix socket; a
credential's password is checked there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from flpg.app.message import ErrorCode, error_code_to_stored
from flpg.cli import main
from flpg.errors import InvalidState, NotFound
from flpg.local.cluster import Cluster
from flpg.store import principals as store_principals
from flpg.store import runs as store_runs
from flpg.store.credentials import (
    CredentialError,
    Credentials,
    load_credentials,
    login_params,
    role_url,
    write_credentials,
)
from flpg.store.db import Connection, connect
from flpg.store.errors import CredentialRefused
from tests._binaries import require_bindir
from tests.db._served import flpg_cli, free_port

from .conftest import APP_HASH, BUNDLE, register, scalar


@pytest.fixture
def admin(db_url: str) -> Iterator[Connection]:
    """An admin connection; afterwards every role this database enrolled is dropped."""
    with admin_session(db_url) as conn:
        yield conn


@contextlib.contextmanager
def admin_session(db_url: str) -> Iterator[Connection]:
    """An admin connection; afterwards every role this database enrolled is dropped."""
    with connect(db_url, application_name="flpg-test") as conn:
        try:
            yield conn
        finally:
            roles = [r[0] for r in conn.execute("SELECT role_name FROM principals").fetchall()]
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                (roles,),
            )
            for role in roles:
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _credential(tmp_path: Path, db_url: str, enrolled: store_principals.Enrolled) -> Path:
    path = tmp_path / f"{enrolled.name}.json"
    url = role_url(login_params(db_url), enrolled.role, enrolled.password)
    write_credentials(path, Credentials(url=url, role=enrolled.role, kind=enrolled.kind))
    return path


def _message(conn: Connection, run: int, dst: int, state: str) -> int:
    claimed = state == "claimed"
    return int(
        scalar(
            conn,
            "INSERT INTO messages (run_id, dst_node_id, message_type, ttl_seconds, deadline,"
            " state, claimed_by, claimed_at, lease_until)"
            " VALUES (%s, %s, 'train', 3600, now() + interval '1 hour', %s,"
            " CASE WHEN %s THEN 'w' END, CASE WHEN %s THEN now() END,"
            " CASE WHEN %s THEN now() + interval '1 hour' END) RETURNING id",
            (run, dst, state, claimed, claimed, claimed),
        )
    )


def test_an_enrolled_node_is_a_login_role_in_flpg_node_only(admin: Connection) -> None:
    enrolled = store_principals.enrol_node(admin, "hospital-a")
    role = admin.execute(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles"
        " WHERE rolname = %s",
        (enrolled.role,),
    ).fetchone()
    assert role == (True, False, False, False)
    groups = admin.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        " JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        (enrolled.role,),
    ).fetchall()
    assert groups == [("flpg_node",)]
    assert enrolled.role.startswith("flpg_node_hospital_a_")
    assert scalar(admin, "SELECT status FROM nodes WHERE id = %s", (enrolled.node_id,)) == "offline"
    mapped = admin.execute(
        "SELECT p.kind, pn.node_id FROM principals p JOIN principal_nodes pn USING (role_name)"
        " WHERE role_name = %s",
        (enrolled.role,),
    ).fetchall()
    assert mapped == [("node", enrolled.node_id)]
    assert len(enrolled.password) >= 32


def test_enrolment_adopts_a_registered_node(admin: Connection) -> None:
    node_id = register(admin, "lab")
    assert store_principals.enrol_node(admin, "lab").node_id == node_id
    listed = store_principals.list_all(admin)
    assert [(p.kind, p.node_names) for p in listed] == [("node", ["lab"])]


def test_the_credential_connects_and_sees_only_its_own_node(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    other = register(admin, "other")
    enrolled = store_principals.enrol_node(admin, "mine")
    path = _credential(tmp_path, db_url, enrolled)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with connect(load_credentials(path)) as conn:
        assert scalar(conn, "SELECT current_user") == enrolled.role
        assert conn.execute("SELECT id FROM nodes").fetchall() == [(enrolled.node_id,)]
        assert conn.execute("SELECT 1 FROM nodes WHERE id = %s", (other,)).fetchall() == []


def test_enrolling_a_node_twice_is_refused_and_changes_nothing(admin: Connection) -> None:
    first = store_principals.enrol_node(admin, "twice")
    before = admin.execute("SELECT * FROM principals").fetchall()
    roles = scalar(admin, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'flpg_node_twice%%'")
    with pytest.raises(InvalidState, match="'twice' is already enrolled") as info:
        store_principals.enrol_node(admin, "twice")
    assert first.role in str(info.value)
    assert admin.execute("SELECT * FROM principals").fetchall() == before
    assert (
        scalar(admin, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'flpg_node_twice%%'")
        == roles
        == 1
    )


def test_revoking_ends_sessions_drops_the_role_and_fails_its_instructions(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    enrolled = store_principals.enrol_node(admin, "gone")
    assert enrolled.node_id is not None
    stays = register(admin, "stays")
    run_id = store_runs.create(
        admin,
        app_hash=APP_HASH,
        app_name="testapp",
        bundle=BUNDLE,
        run_config={},
        node_ids=[enrolled.node_id, stays],
    )
    queued = _message(admin, run_id, enrolled.node_id, "queued")
    claimed = _message(admin, run_id, enrolled.node_id, "claimed")
    other = _message(admin, run_id, stays, "queued")
    path = _credential(tmp_path, db_url, enrolled)
    session = connect(load_credentials(path))
    assert scalar(session, "SELECT 1") == 1

    revoked = store_principals.revoke(admin, "node", "gone")

    role = revoked.role
    assert (role, revoked.node_names, revoked.answered) == (enrolled.role, ("gone",), 2)
    assert scalar(admin, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 0
    assert scalar(admin, "SELECT count(*) FROM principals") == 0
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    assert scalar(admin, "SELECT status FROM nodes WHERE id = %s", (enrolled.node_id,)) == (
        "offline"
    )
    states = dict(admin.execute("SELECT id, state FROM messages WHERE reply_to IS NULL"))
    assert states == {queued: "expired", claimed: "expired", other: "queued"}
    replies = admin.execute(
        "SELECT reply_to, error_code FROM messages WHERE reply_to IS NOT NULL ORDER BY 1"
    ).fetchall()
    stored = error_code_to_stored(ErrorCode.NODE_UNAVAILABLE)
    assert replies == [(queued, stored), (claimed, stored)]
    with pytest.raises(CredentialRefused) as info:
        connect(load_credentials(path))
    assert str(info.value) == (
        f"credential for role {role} was refused: revoked, or the password is wrong"
    )
    assert info.value.exit_code == 6


def test_revoking_a_node_never_enrolled_is_not_found(admin: Connection) -> None:
    register(admin, "plain")
    with pytest.raises(NotFound, match="'plain' is not enrolled"):
        store_principals.revoke(admin, "node", "plain")


def test_an_added_user_submits_runs_as_itself(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    node = register(admin, "n")
    enrolled = store_principals.enrol(admin, "user", "alice")
    assert enrolled.role.startswith("flpg_user_alice_")
    assert admin.execute(
        "SELECT kind, user_name FROM principals WHERE role_name = %s", (enrolled.role,)
    ).fetchall() == [("user", "alice")]
    path = _credential(tmp_path, db_url, enrolled)
    with connect(load_credentials(path)) as conn:
        run_id = store_runs.create(
            conn,
            app_hash=APP_HASH,
            app_name="testapp",
            bundle=BUNDLE,
            run_config={},
            node_ids=[node],
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO runs (app_hash, submitted_by) VALUES (%s, 'bob')", (APP_HASH,)
            )
    assert scalar(admin, "SELECT submitted_by FROM runs WHERE id = %s", (run_id,)) == enrolled.role
    with pytest.raises(InvalidState, match="'alice' already exists"):
        store_principals.enrol(admin, "user", "alice")


BAD_FILES: dict[str, tuple[str | None, str]] = {
    "missing": (None, "does not exist"),
    "not-json": ("{url: x", "is not valid JSON (line 1"),
    "not-an-object": ("[1, 2]", "expected a JSON object"),
    "no-url-no-role": ('{"kind": "node"}', "lacks the field(s) url, role"),
    "empty-kind": ('{"url": "postgresql://", "role": "r", "kind": ""}', "lacks the field(s) kind"),
    "ca-not-text": (
        '{"url": "postgresql://", "role": "r", "kind": "node", "ca_cert": 7}',
        "ca_cert must be text or null",
    ),
    "not-utf8": ("\udcff", "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_credential_file_is_one_line(tmp_path: Path, case: str) -> None:
    text, expected = BAD_FILES[case]
    path = tmp_path / "cred.json"
    if text is not None:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CredentialError) as info:
        load_credentials(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_a_tls_credential_carries_its_ca_beside_it(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    params: dict[str, Any] = {"host": "db.example.org", "port": 5433, "dbname": "flpg"}
    url = role_url({**params, "sslmode": "verify-full"}, "flpg_node_x", "p/w?")
    assert url == "postgresql://flpg_node_x:p%2Fw%3F@db.example.org:5433/flpg?sslmode=verify-full"
    path = tmp_path / "x.json"
    write_credentials(path, Credentials(url=url, role="flpg_node_x", kind="node", ca_cert=pem))
    (tmp_path / "x.json.ca.crt").unlink()  # copied alone to another machine
    loaded = load_credentials(path)
    ca = tmp_path / "x.json.ca.crt"
    assert ca.read_text() == pem
    assert loaded == url + "&sslrootcert=" + str(ca).replace("/", "%2F")
    assert psycopg.conninfo.conninfo_to_dict(loaded)["sslrootcert"] == str(ca)


# CLI -------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    env = {"FLPG_DATABASE_URL": None}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="flpg")


def test_cli_enrols_revokes_and_adds(admin: Connection, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "node.json"
    result = _cli("node", "enroll", "site-1", "--out", str(out), "--db", db_url)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    cred = json.loads(out.read_text())
    assert (cred["kind"], cred["node"], cred["user"], cred["ca_cert"]) == (
        "node",
        "site-1",
        None,
        None,
    )
    assert cred["role"] in result.output and "local socket" in result.output
    with connect(load_credentials(out)) as conn:
        assert scalar(conn, "SELECT current_user") == cred["role"]

    again = _cli("node", "enroll", "site-1", "--out", str(tmp_path / "2.json"), "--db", db_url)
    assert again.exit_code == 5
    assert "already enrolled" in again.output and not (tmp_path / "2.json").exists()

    revoked = _cli("node", "revoke", "site-1", "--db", db_url)
    assert revoked.exit_code == 0, revoked.output
    assert _cli("node", "revoke", "site-1", "--db", db_url).exit_code == 4

    user = tmp_path / "alice.json"
    added = _cli("user", "add", "alice", "--out", str(user), "--db", db_url)
    assert added.exit_code == 0, added.output
    assert json.loads(user.read_text())["user"] == "alice"


def test_cli_a_bad_host_fails_before_any_role_exists(admin: Connection, db_url: str) -> None:
    result = _cli("node", "enroll", "n", "--host", "nope", "--db", db_url)
    assert result.exit_code == 2
    assert "--host 'nope'" in result.output
    assert scalar(admin, "SELECT count(*) FROM principals") == 0


def test_cli_node_without_a_subcommand_still_needs_its_name() -> None:
    result = _cli("node")
    assert result.exit_code == 2
    assert "--name" in result.output and "flpg node --help" in result.output


# Over TLS, with a served embedded cluster -------------------------------------------


def test_enrolment_on_a_served_cluster_connects_over_tls_until_revoked(tmp_path: Path) -> None:
    require_bindir()
    home = Path(tempfile.mkdtemp(prefix="flpg-enrol-", dir="/tmp"))
    os.chmod(home, 0o711)  # as root, the server account must pass through
    cluster = Cluster(home / "postgres")
    try:
        port = free_port()
        served = flpg_cli(home, "db", "serve", "--listen", f"127.0.0.1:{port}")
        assert served.returncode == 0, served.stderr
        out = tmp_path / "n.json"
        enrolled = flpg_cli(home, "node", "enroll", "remote", "--out", str(out))
        assert enrolled.returncode == 0, enrolled.stderr
        cred = json.loads(out.read_text())
        assert cred["url"].startswith(f"postgresql://{cred['role']}:")
        assert f"@127.0.0.1:{port}/flpg?sslmode=verify-full" in cred["url"]
        assert cred["ca_cert"] == (cluster.tls_dir / "ca.crt").read_text()
        with connect(load_credentials(out)) as conn:
            assert scalar(conn, "SELECT current_user") == cred["role"]
            assert scalar(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        revoked = flpg_cli(home, "node", "revoke", "remote")
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(CredentialRefused, match=f"credential for role {cred['role']} was"):
            connect(load_credentials(out))
    finally:
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("name", ["", "tab\there", "x" * 129])
def test_cli_a_bad_user_name_is_refused_before_connecting(name: str) -> None:
    result = _cli("user", "add", name, "--db", "postgresql://u@127.0.0.1:1/none")
    assert result.exit_code == 2
    assert "NAME" in result.output and "127.0.0.1" not in result.output


def test_users_with_credentials_see_and_stop_only_their_own_runs(
    admin: Connection, db_url: str, tmp_path: Path
) -> None:
    """`--credentials` connects the user commands as the user's own role: row-level
    security shows alice her run and hides it from bob, who cannot stop it either."""
    register(admin, "node-0")
    creds = {}
    for name in ("alice", "bob"):
        creds[name] = str(tmp_path / f"{name}.json")
        assert _cli("user", "add", name, "--out", creds[name], "--db", db_url).exit_code == 0
    app = str(Path(__file__).parents[2] / "examples" / "quickstart-numpy")
    submitted = _cli("run", app, "--credentials", creds["alice"], "--format", "json")
    assert submitted.exit_code == 0, submitted.output
    run_id = json.loads(submitted.output)["run_id"]
    alice_role = json.loads(Path(creds["alice"]).read_text())["role"]
    assert scalar(admin, "SELECT submitted_by FROM runs WHERE id = %s", (run_id,)) == alice_role

    def listed(who: str) -> list[int]:
        shown = _cli("ls", "--credentials", creds[who], "--format", "json")
        assert shown.exit_code == 0, shown.output
        return [r["run_id"] for r in json.loads(shown.output)]

    assert listed("alice") == [run_id]
    assert listed("bob") == []
    stopped = _cli("stop", str(run_id), "--credentials", creds["bob"])
    assert stopped.exit_code == 4, stopped.output  # bob cannot even see it
    assert "\n" not in stopped.output.strip()
    assert scalar(admin, "SELECT status::text FROM runs WHERE id = %s", (run_id,)) == "pending"
    done = _cli("stop", str(run_id), "--credentials", creds["alice"])  # her own run
    assert done.exit_code == 0, done.output
    assert scalar(admin, "SELECT status::text FROM runs WHERE id = %s", (run_id,)) == "stopped"
    both = _cli("ls", "--credentials", creds["alice"], "--db", db_url)
    assert both.exit_code == 2 and "--credentials and --db" in both.output
