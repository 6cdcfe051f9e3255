"""Migrations rebuild exactly the models' schema, go down cleanly, and run once under
concurrency."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import subprocess
import sys
import threading
import time

import psycopg
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flpg.models import PRINCIPAL_KINDS, metadata
from flpg.store import migrate
from flpg.store.sql import latest_views

from ._schema import describe, diff, leftovers, upgrade_in_process

MIGRATION_LOCK_KEY = 0x666C7067  # migrations/env.py


def _engine(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url),
        poolclass=sqlalchemy.pool.NullPool,
    )


def _build_from_models(url: str) -> None:
    engine = _engine(url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        for ddl in latest_views().values():  # the newest version of each view file
            conn.execute(ddl)
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        for name in migrate.SECURITY_SQL:  # roles, then functions, grants and policies
            conn.execute(migrate.security_sql(name))


GROUP_ROLES = {f"flpg_{kind}" for kind in PRINCIPAL_KINDS}


def security(url: str) -> dict[str, list[tuple[object, ...]]]:
    """What `describe` does not see: row-level security flags, policies, privileges
    (tables, columns, sequences, functions, schema) and view options."""
    queries = {
        "rls": """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, c.reloptions::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') ORDER BY 1""",
        "policies": """
            SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
            FROM pg_policies WHERE schemaname = 'public' ORDER BY 1, 2""",
        "table_grants": """
            SELECT table_name, grantee, privilege_type FROM information_schema.table_privileges
            WHERE table_schema = 'public' AND grantee LIKE 'flpg\\_%' ORDER BY 1, 2, 3""",
        "column_grants": """
            SELECT table_name, column_name, grantee, privilege_type
            FROM information_schema.column_privileges
            WHERE table_schema = 'public' AND grantee LIKE 'flpg\\_%' ORDER BY 1, 2, 3, 4""",
        "other_grants": """
            SELECT c.relname::text, c.relacl::text FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'S'
            UNION ALL
            SELECT p.proname::text, p.proacl::text FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
            UNION ALL
            SELECT nspname::text, nspacl::text FROM pg_namespace WHERE nspname = 'public'
            ORDER BY 1""",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        return {key: conn.execute(sql).fetchall() for key, sql in queries.items()}


def test_migrations_build_exactly_the_models(empty_db_url: str, second_empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    _build_from_models(second_empty_db_url)

    migrated, modelled = describe(empty_db_url), describe(second_empty_db_url)
    assert diff(migrated, modelled) == []
    assert migrated == modelled  # also column order, which `diff` ignores
    assert security(empty_db_url) == security(second_empty_db_url)

    # The description is not vacuous: it sees what the design promises.
    tables = {t[0] for t in migrated["tables"]}
    assert tables == {
        "apps",
        "array_chunks",
        "array_chunks_transient",
        "arrays",
        "checkpoint_arrays",
        "checkpoints",
        "message_arrays",
        "messages",
        "nodes",
        "principal_nodes",
        "principals",
        "round_metrics",
        "run_logs",
        "run_nodes",
        "run_roles",
        "runs",
        "transient_marker",
    }
    # Round-transient payloads and the crash marker skip the WAL; everything else is logged.
    persistence = {t[0]: t[1] for t in migrated["tables"]}
    assert {t for t, p in persistence.items() if p == "u"} == {
        "array_chunks_transient",
        "transient_marker",
    }
    assert {p for t, p in persistence.items()} == {"p", "u"}
    storage = {(c[0], c[2]): c[8] for c in migrated["columns"]}
    assert storage[("array_chunks", "data")] == "e"  # EXTERNAL: no compression attempts
    assert storage[("array_chunks_transient", "data")] == "e"
    assert storage[("apps", "bundle")] == "e"
    assert {v[0] for v in migrated["views"]} == {
        "message_latency",
        "node_accounting",
        "node_participation",
        "round_history",
        "run_accounting",
        "run_history",
    }
    enums = dict(migrated["enums"])
    assert enums["message_state"] == ("queued", "claimed", "done", "expired", "cancelled")
    assert enums["run_status"] == (
        "pending",
        "starting",
        "running",
        "finished",
        "failed",
        "stopped",
    )
    constraint_names = {c[1] for c in migrated["constraints"]}
    assert {
        "fk_messages_dst_in_selection",
        "fk_messages_src_in_selection",
        "uq_messages_reply_to",
        "ck_messages_claimed_has_lease",
    } <= constraint_names


def test_alembic_autogenerate_finds_no_difference(db_url: str) -> None:
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diffs = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_upgrade_downgrade_upgrade_round_trip(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    first, first_security = describe(empty_db_url), security(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()

    migrate.downgrade(empty_db_url, "0006")
    undone = security(empty_db_url)
    assert [p for p in undone["policies"]] == []
    assert [r for r in undone["rls"] if r[1] or r[2] or r[3] is not None] == []
    assert undone["table_grants"] == undone["column_grants"] == []
    assert [g for g in undone["other_grants"] if "flpg_" in str(g[1])] == []

    migrate.downgrade(empty_db_url, "base")
    assert leftovers(empty_db_url) == {"relations": [], "types": [], "functions": []}
    assert migrate.current_revision(empty_db_url) is None

    migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    again = describe(empty_db_url)
    assert diff(first, again) == []
    assert first == again
    assert security(empty_db_url) == first_security


def _trust_state(url: str) -> dict[str, list[str]]:
    """`describe` and `security` as sorted lines, with object ACLs reduced to flpg's
    group roles' items (a REVOKE can leave an explicit owner-only ACL where there was
    the default)."""
    state = {key: sorted(map(str, rows)) for key, rows in describe(url).items()}
    for key, found in security(url).items():
        if key == "other_grants":
            found = [(name, sorted(re.findall(r"flpg_\w+=\w*", str(acl)))) for name, acl in found]
        state[f"security {key}"] = sorted(map(str, found))
    return state


def test_each_downgrade_restores_the_revision_before(empty_db_url: str) -> None:
    """Step by step from the first revision to head: going down one step leaves exactly
    the schema, policies, grants and function bodies the step found."""
    revisions = sorted(migrate.known_revisions())
    assert revisions[-1] == migrate.head_revision()
    migrate.upgrade(empty_db_url, revisions[0])
    for before, after in itertools.pairwise(revisions):
        found = _trust_state(empty_db_url)
        migrate.upgrade(empty_db_url, after)
        migrate.downgrade(empty_db_url, before)
        assert migrate.current_revision(empty_db_url) == before
        left = _trust_state(empty_db_url)
        changed = {
            key: (sorted(set(rows) - set(left[key])), sorted(set(left[key]) - set(rows)))
            for key, rows in found.items()
            if left[key] != rows
        }
        assert changed == {}, f"migration {after}: its downgrade left (missing, extra)"
        migrate.upgrade(empty_db_url, after)


def test_the_trust_schema_is_not_vacuous(db_url: str) -> None:
    """The security description sees what the trust model promises."""
    described = security(db_url)
    assert {r[0] for r in described["rls"] if r[1]} == set(metadata.tables)
    assert {(p[0], p[1]) for p in described["policies"]} >= {
        ("messages", "node_replies"),
        ("runs", "user_own"),
        ("array_chunks", "link_collects"),
    }
    column_grants = {(g[0], g[1], g[2]) for g in described["column_grants"]}
    assert ("array_chunks", "seq", "flpg_auditor") in column_grants
    assert ("array_chunks", "data", "flpg_auditor") not in column_grants
    assert ("array_chunks_transient", "seq", "flpg_auditor") in column_grants
    assert ("array_chunks_transient", "data", "flpg_auditor") not in column_grants
    deletes = {(g[0], g[1]) for g in described["table_grants"] if g[2] == "DELETE"}
    assert deletes == {
        ("array_chunks", "flpg_link"),
        ("array_chunks_transient", "flpg_link"),
        ("arrays", "flpg_serverapp"),
        ("checkpoint_arrays", "flpg_serverapp"),
    }
    with psycopg.connect(db_url, autocommit=True) as conn:
        groups = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'flpg\\_%' AND NOT rolcanlogin"
        ).fetchall()
    assert {g[0] for g in groups} >= GROUP_ROLES


def test_concurrent_upgrades_migrate_once(empty_db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=upgrade_in_process, args=(empty_db_url, barrier, results, tag))
        for tag in ("a", "b")
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [o[1] for o in outcomes] == [True, True], outcomes
    ran = [tag for tag, _, _, logs, _ in outcomes if any("Running upgrade" in m for m in logs)]
    assert len(ran) == 1, f"the migration ran in {ran!r}, expected exactly one process"

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        assert versions == [(migrate.head_revision(),)]
        # Every table and the version row were written by one and the same transaction.
        xmins = conn.execute(
            """
            SELECT DISTINCT c.xmin::text FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'r'
            UNION
            SELECT xmin::text FROM alembic_version
            """
        ).fetchall()
        assert len(xmins) == 1, xmins


def test_ensure_schema_migrates_an_empty_database(empty_db_url: str) -> None:
    assert migrate.current_revision(empty_db_url) is None
    migrate.ensure_schema(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()


def test_ensure_schema_is_a_noop_on_a_migrated_database(db_url: str) -> None:
    before = describe(db_url)
    # Hold the migration lock: if ensure_schema tried to migrate, it would block on it.
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        done = threading.Event()
        errors: list[BaseException] = []
        elapsed: list[float] = []

        def call() -> None:
            t0 = time.monotonic()
            try:
                migrate.ensure_schema(db_url)
            except BaseException as exc:
                errors.append(exc)
            elapsed.append(time.monotonic() - t0)
            done.set()

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        finished = done.wait(5)
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        thread.join(30)
    assert finished, "ensure_schema waited for the migration lock on a migrated database"
    assert errors == []
    assert elapsed[0] < 1.0
    assert migrate.current_revision(db_url) == migrate.head_revision()
    assert describe(db_url) == before


def test_the_head_revision_constant_is_alembics_head() -> None:
    assert migrate.head_revision() == migrate.HEAD_REVISION


def test_ensure_schema_at_head_does_not_load_alembic(db_url: str) -> None:
    """A service start on a migrated database checks the revision without Alembic or
    SQLAlchemy; on an empty one it migrates (and then loads them)."""
    probe = (
        "import sys; from flpg.store.migrate import ensure_schema; ensure_schema(sys.argv[1]); "
        "print(sorted(m for m in ('alembic', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, db_url], capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[-2] == "[]"


def test_ensure_schema_on_an_empty_database_migrates_to_head(empty_db_url: str) -> None:
    assert migrate.current_revision(empty_db_url) is None
    migrate.ensure_schema(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.HEAD_REVISION
