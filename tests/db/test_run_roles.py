"""Run roles (sql/security/runroles.v1.sql): a ServerApp's and a ClientApp's own
login role, made and dropped only by the principals allowed to, bound to one run
(and node ids), and collected by the link once the run ended.

Each forbidden call is tried as the principal who must not make it, and PostgreSQL
refuses it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.errors import InsufficientPrivilege

from flpg.errors import InvalidState, PermissionDenied
from flpg.states import RunStatus
from flpg.store import migrate, runroles
from flpg.store import runs as store_runs
from flpg.store.db import Connection, connect
from flpg.store.errors import CredentialRefused
from tests.db.conftest import create_run, register, scalar


@dataclass
class Login:
    role: str
    url: str


def _login_role(conn: Connection, url: str, kind: str, nodes: list[int] = ()) -> Login:  # type: ignore[assignment]
    """A login role in group flpg_<kind> with its principals mapping (as enrolment makes)."""
    role = f"t_{kind}_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    conn.execute(
        pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            pgsql.Identifier(role), pgsql.Literal(password), pgsql.Identifier(f"flpg_{kind}")
        )
    )
    conn.execute("INSERT INTO principals (role_name, kind) VALUES (%s, %s)", (role, kind))
    for node in nodes:
        conn.execute("INSERT INTO principal_nodes VALUES (%s, %s)", (role, node))
    return Login(role, runroles.RunLogin(role, password).url(url))


@dataclass
class World:
    url: str
    run: int  # starting, on A and B
    other: int  # pending, on B only
    a: int
    b: int
    exec: Login
    node_a: Login
    node_b: Login
    link: Login
    user: Login


@pytest.fixture
def world(conn: Connection, db_url: str) -> Iterator[World]:
    a, b = register(conn, "A"), register(conn, "B")
    run, other = create_run(conn, [a, b]), create_run(conn, [b])
    claim = store_runs.claim_next(conn, "exec-test", exclude=[other])
    assert claim is not None and claim.run_id == run
    logins = {
        "exec": _login_role(conn, db_url, "exec"),
        "node_a": _login_role(conn, db_url, "node", [a]),
        "node_b": _login_role(conn, db_url, "node", [b]),
        "link": _login_role(conn, db_url, "link"),
        "user": _login_role(conn, db_url, "user"),
    }
    yield World(db_url, run, other, a, b, **logins)
    runroles.collect(conn, grace=0)
    for login in logins.values():
        conn.execute("DELETE FROM principals WHERE role_name = %s", (login.role,))
        conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(login.role)))


def _as(login: Login) -> psycopg.Connection[Any]:
    return connect(login.url, application_name="flpg-test")


def _role_exists(conn: Connection, role: str) -> bool:
    return bool(scalar(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)))


def test_an_exec_gets_a_serverapp_role_that_sees_only_its_run(
    world: World, conn: Connection
) -> None:
    with _as(world.exec) as ex:
        login = runroles.serverapp_login(ex, world.run)
    assert _role_exists(conn, login.role)
    row = conn.execute(
        "SELECT kind, run_id FROM principals WHERE role_name = %s", (login.role,)
    ).fetchone()
    assert row == ("serverapp", world.run)
    with connect(login.url(world.url)) as sa:
        assert scalar(sa, "SELECT current_user") == login.role
        assert [r[0] for r in sa.execute("SELECT id FROM runs").fetchall()] == [world.run]
        with pytest.raises(InsufficientPrivilege):
            sa.execute("SELECT * FROM flpg_serverapp_login(%s)", (world.other,))


def test_each_serverapp_launch_gets_a_fresh_role_and_password(world: World) -> None:
    with _as(world.exec) as ex:
        first = runroles.serverapp_login(ex, world.run)
        second = runroles.serverapp_login(ex, world.run)
    assert first.role != second.role and first.password != second.password
    assert len(first.password) == 64


def test_a_run_not_being_launched_gets_no_serverapp_role(world: World) -> None:
    with _as(world.exec) as ex, pytest.raises(InvalidState, match="not being"):
        runroles.serverapp_login(ex, world.other)  # pending


@pytest.mark.parametrize("who", ["node_a", "link", "user"])
def test_only_an_exec_may_ask_for_a_serverapp_role(world: World, who: str) -> None:
    with _as(getattr(world, who)) as c, pytest.raises(PermissionDenied):
        runroles.serverapp_login(c, world.run)


@pytest.mark.parametrize("who", ["exec", "link", "user"])
def test_only_a_node_may_ask_for_a_clientapp_role(world: World, who: str) -> None:
    with _as(getattr(world, who)) as c, pytest.raises(PermissionDenied):
        runroles.clientapp_login(c, world.run, [world.a])


def test_a_node_gets_a_clientapp_role_for_its_own_selected_node_ids_only(
    world: World, conn: Connection
) -> None:
    with _as(world.node_a) as node:
        # It asks for B too (another node's id): only A is mapped.
        login = runroles.clientapp_login(node, world.run, [world.a, world.b])
    mapped = conn.execute(
        "SELECT node_id FROM principal_nodes WHERE role_name = %s", (login.role,)
    ).fetchall()
    assert mapped == [(world.a,)]
    with connect(login.url(world.url)) as ca:
        assert [r[0] for r in ca.execute("SELECT id FROM runs").fetchall()] == [world.run]
        assert scalar(ca, "SELECT flpg_my_node_ids()") == [world.a]


def test_a_node_gets_no_clientapp_role_for_a_run_or_node_not_its_own(world: World) -> None:
    with _as(world.node_a) as node:
        with pytest.raises(InvalidState):
            runroles.clientapp_login(node, world.other, [world.a])  # run not on A
        with pytest.raises(InvalidState):
            runroles.clientapp_login(node, world.other, [world.b])  # B is not node_a's


def _finish(conn: Connection, run: int) -> None:
    assert store_runs.mark_running(conn, run, "exec-test", 1)
    store_runs.finish(conn, run, RunStatus.FINISHED, None, attempt=1)


def test_an_ended_run_gets_no_clientapp_role(world: World, conn: Connection) -> None:
    _finish(conn, world.run)
    with _as(world.node_a) as node, pytest.raises(InvalidState):
        runroles.clientapp_login(node, world.run, [world.a])


def test_a_node_drops_its_own_clientapp_roles_but_not_another_nodes(
    world: World, conn: Connection
) -> None:
    with _as(world.node_a) as node_a, _as(world.node_b) as node_b:
        mine = runroles.clientapp_login(node_a, world.run, [world.a])
        theirs = runroles.clientapp_login(node_b, world.run, [world.b])
        with pytest.raises(PermissionDenied):
            runroles.drop(node_a, theirs.role)
        assert runroles.drop(node_a, mine.role)
    assert not _role_exists(conn, mine.role)
    assert _role_exists(conn, theirs.role)


def test_an_exec_drops_serverapp_roles_but_not_clientapp_roles(
    world: World, conn: Connection
) -> None:
    with _as(world.exec) as ex, _as(world.node_a) as node:
        sa = runroles.serverapp_login(ex, world.run)
        ca = runroles.clientapp_login(node, world.run, [world.a])
        with pytest.raises(PermissionDenied):
            runroles.drop(ex, ca.role)
        with pytest.raises(PermissionDenied):  # nor a role that is no run role
            runroles.drop(ex, world.node_a.role)
        with pytest.raises(PermissionDenied):
            runroles.drop(node, sa.role)
        assert runroles.drop(ex, sa.role)
    assert not _role_exists(conn, sa.role)
    assert _role_exists(conn, world.node_a.role)


def test_dropping_a_run_role_ends_its_sessions(world: World, conn: Connection) -> None:
    with _as(world.exec) as ex:
        login = runroles.serverapp_login(ex, world.run)
        sa = connect(login.url(world.url))
        assert runroles.drop(ex, login.role)
    with pytest.raises(psycopg.OperationalError):
        sa.execute("SELECT 1")
    sa.close()
    with pytest.raises(CredentialRefused, match=login.role):
        connect(login.url(world.url)).close()


def test_the_link_collects_the_roles_of_runs_that_ended_and_orphans(
    world: World, conn: Connection
) -> None:
    with _as(world.exec) as ex, _as(world.node_a) as node:
        sa = runroles.serverapp_login(ex, world.run)
        ca = runroles.clientapp_login(node, world.run, [world.a])
    with _as(world.link) as link:
        assert runroles.collect(link, grace=60) == 0  # the run goes on
        _finish(conn, world.run)
        assert runroles.collect(link, grace=60) == 0  # ended just now: not yet
        conn.execute(
            "UPDATE runs SET finished_at = now() - interval '2 minutes' WHERE id = %s",
            (world.run,),
        )
        assert runroles.collect(link, grace=60) == 2
    assert not _role_exists(conn, sa.role) and not _role_exists(conn, ca.role)
    for who in ("exec", "node_a", "user"):
        with _as(getattr(world, who)) as c, pytest.raises(PermissionDenied):
            runroles.collect(c, grace=0)


def test_no_role_but_flpg_roles_connects(empty_db_url: str, conn: Connection) -> None:
    # Migrated here: a database copied from a template does not copy its CONNECT grants.
    migrate.upgrade(empty_db_url)
    db_url = empty_db_url
    role, password = f"t_stranger_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    conn.execute(
        pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            pgsql.Identifier(role), pgsql.Literal(password)
        )
    )
    try:
        with pytest.raises(CredentialRefused, match=f"role '{role}' may not connect"):
            connect(runroles.RunLogin(role, password).url(db_url)).close()
    finally:
        conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


def test_every_run_role_stays_in_the_audit_trail_after_it_is_dropped(
    world: World, conn: Connection
) -> None:
    with _as(world.exec) as ex, _as(world.node_a) as node:
        sa = runroles.serverapp_login(ex, world.run)
        ca = runroles.clientapp_login(node, world.run, [world.a, world.b])
        runroles.drop(ex, sa.role)
    trail = conn.execute(
        "SELECT role_name, kind, run_id, node_ids, made_for, dropped_at IS NOT NULL"
        " FROM run_roles ORDER BY created_at, kind DESC"
    ).fetchall()
    assert trail == [
        (sa.role, "serverapp", world.run, [], world.exec.role, True),
        (ca.role, "clientapp", world.run, [world.a], world.node_a.role, False),
    ]
    with _as(world.node_a) as node, pytest.raises(InsufficientPrivilege):
        node.execute("SELECT * FROM run_roles")
    with _as(world.node_a) as node, pytest.raises(InsufficientPrivilege):
        node.execute("UPDATE run_roles SET dropped_at = NULL")


@pytest.mark.parametrize("kind", ["node", "exec"])
def test_revoking_a_node_or_exec_drops_the_run_roles_made_for_it(
    world: World, conn: Connection, kind: str
) -> None:
    from flpg.store import principals as store_principals

    if kind == "node":  # node_a's role answers for node A
        with _as(world.node_a) as node:
            made = runroles.clientapp_login(node, world.run, [world.a])
    else:
        enrolled = store_principals.enrol(conn, "exec", "exec-a")
        with connect(runroles.RunLogin(enrolled.role, enrolled.password).url(world.url)) as c:
            made = runroles.serverapp_login(c, world.run)
    with _as(world.exec) as other_exec:  # made for another role: stays
        kept = runroles.serverapp_login(other_exec, world.run)
    store_principals.revoke(conn, kind, "A" if kind == "node" else "exec-a")
    assert not _role_exists(conn, made.role) and _role_exists(conn, kept.role)
    dropped = scalar(
        conn, "SELECT dropped_at IS NOT NULL FROM run_roles WHERE role_name = %s", (made.role,)
    )
    assert dropped is True
