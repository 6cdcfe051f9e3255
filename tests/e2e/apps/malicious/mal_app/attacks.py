"""What both halves of the malicious app try: run one statement and say how it went,
try other logins, and the attacks a ServerApp and a ClientApp share.

An outcome is "denied" (PostgreSQL refused it: insufficient privilege, which a
row-level security WITH CHECK violation also is), "N rows" (rows returned or
affected), "ok" (a statement without rows succeeded) or "error SQLSTATE: message".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

REPEAT_AT_MOST = 60.0
"""Seconds an attacker repeats its attacks at most, waiting for its stop file."""

Attack = tuple[str, "str | sql.Composed", tuple[Any, ...] | None]
"""(name, statement, parameters)."""


def url() -> str:
    return os.environ["FLPG_DATABASE_URL"]


def connect() -> psycopg.Connection[Any]:
    """The process's own run role, on a connection of the attacker's own."""
    return psycopg.connect(url(), autocommit=True, application_name="flpg-malicious")


def outcome(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> str:
    try:
        cur = conn.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege:
        return "denied"
    except psycopg.Error as exc:
        return f"error {exc.sqlstate}: {str(exc).splitlines()[0] if str(exc) else ''}"
    count = len(cur.fetchall()) if cur.description is not None else cur.rowcount
    return "ok" if count < 0 else f"{count} rows"


def run_all(conn: psycopg.Connection[Any], attacks: list[Attack]) -> dict[str, str]:
    """Each attack's outcome; a role a successful SET ROLE took is reset after it."""
    found = {}
    for name, statement, params in attacks:
        found[name] = outcome(conn, statement, params)
        if name.startswith("set-role") and found[name] == "ok":
            conn.execute("RESET ROLE")
    return found


def repeat(
    conn: psycopg.Connection[Any],
    attacks: list[Attack],
    cfg: Mapping[str, Any],
    undo: Callable[[psycopg.Connection[Any]], None] | None = None,
) -> dict[str, str]:
    """Run `attacks` once, or, with `stop-file` set, again and again until that file
    exists (REPEAT_AT_MOST s at most). One outcome per attack ("a | b" where passes
    differed) and `passes`, how many there were."""
    stop = str(cfg["stop-file"])
    deadline = time.monotonic() + REPEAT_AT_MOST
    passes = []
    while True:
        passes.append(run_all(conn, attacks))
        if undo is not None:
            undo(conn)
        if not stop or Path(stop).exists() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    found = {name: " | ".join(sorted({p[name] for p in passes})) for name in passes[0]}
    return {**found, "passes": str(len(passes))}


def whoami(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user::text, session_user::text").fetchone()
    assert row is not None
    return f"{row[0]} {row[1]}"


def login(**override: str) -> str:
    """Connect with FLPG_DATABASE_URL's parameters, its password dropped and
    `override` on top (none: libpq's defaults and PG* variables alone): "refused",
    "elsewhere" (another server or database), or "connected as ROLE"."""
    target = conninfo_to_dict(url())
    params: dict[str, Any] = {}
    if override:
        params = {k: v for k, v in target.items() if k != "password"}
        params.update(override)
    try:
        with psycopg.connect(**params, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT current_user::text, current_database()::text, current_setting('port'),"
                " to_regclass('public.runs') IS NOT NULL"
            ).fetchone()
    except psycopg.Error:
        return "refused"
    assert row is not None
    user, dbname, port, flpg = row
    if (dbname, port, flpg) != (target.get("dbname"), str(target.get("port", "5432")), True):
        return "elsewhere"
    return f"connected as {user}"


def logins(node_roles: list[str], run_id: int) -> dict[str, str]:
    """Every other login this process can think of."""
    found = {"login-libpq-defaults": login()}
    found["login-as-postgres"] = login(user="postgres")
    for i, role in enumerate(node_roles):
        found[f"login-as-node-role-{i}"] = login(user=role)
    # The embedded cluster's superuser, trusted on its private socket (a documented
    # limit: an OS process of the cluster's account, or root, is its superuser).
    found["login-as-cluster-superuser"] = login(user="flpg")
    found["login-with-worker-credential"] = worker_credential(run_id)
    found["login-other-databases"] = other_databases()
    return found


def other_databases() -> str:
    """Connect with this run role to each other database it may connect to (every
    flpg database of the cluster grants CONNECT to the group roles): "none", or
    "connected to N: NAMES"."""
    with psycopg.connect(url(), connect_timeout=5) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn"
                " AND datname <> current_database()"
                " AND has_database_privilege(datname, 'CONNECT') ORDER BY datname"
            )
        ]
    reached = []
    for name in names:
        try:
            with psycopg.connect(url(), dbname=name, connect_timeout=5):
                reached.append(name)
        except psycopg.Error:
            pass
    return f"connected to {len(reached)}: {' '.join(reached)}" if reached else "none"


def worker_credential(run_id: int) -> str:
    """Read the credential file of the worker that started this process (named on its
    command line) and connect with it: "no credential file", "unreadable", "refused",
    or "connected as ROLE, N rows of other runs" (the messages it then sees)."""
    parent = Path("/proc", str(os.getppid()))
    try:
        argv = (parent / "cmdline").read_bytes().decode().split("\0")
        path = Path(os.readlink(parent / "cwd"), argv[argv.index("--credentials") + 1])
    except (OSError, ValueError, IndexError):
        return "no credential file"
    try:
        stolen = json.loads(path.read_text())["url"]
    except (OSError, ValueError, KeyError):
        return "unreadable"
    try:
        with psycopg.connect(stolen, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT current_user::text, (SELECT count(*) FROM messages"
                " WHERE run_id IS DISTINCT FROM %s)",
                (run_id,),
            ).fetchone()
    except psycopg.Error:
        return "refused"
    assert row is not None
    return f"connected as {row[0]}, {row[1]} rows of other runs"


def common(cfg: Mapping[str, Any]) -> list[Attack]:
    """The attacks a ServerApp and a ClientApp both try."""
    return _sandbox(cfg) + _roles(cfg) + _reads(cfg) + _writes(cfg)


def _sandbox(cfg: Mapping[str, Any]) -> list[Attack]:
    """Escape the database: programs, server files, objects of its own, other roles."""
    marker = str(cfg["marker"])
    program = f"touch {marker}"
    found: list[Attack] = [
        (
            "copy-to-program",
            sql.SQL("COPY (SELECT 1) TO PROGRAM {}").format(sql.Literal(program)),
            None,
        ),
        ("copy-from-server-file", "COPY run_logs (line) FROM '/etc/passwd'", None),
        ("copy-to-server-file", sql.SQL("COPY (SELECT 1) TO {}").format(sql.Literal(marker)), None),
        ("pg-read-file", "SELECT pg_read_file('/etc/passwd')", None),
        ("pg-read-binary-file", "SELECT pg_read_binary_file('/etc/passwd')", None),
        ("lo-import", "SELECT lo_import('/etc/passwd')", None),
        ("pg-ls-dir", "SELECT pg_ls_dir('.')", None),
        ("create-table-public", "CREATE TABLE public.malicious (x int)", None),
        ("create-temp-table", "CREATE TEMP TABLE malicious (x int)", None),
        ("create-role", "CREATE ROLE malicious_role LOGIN SUPERUSER", None),
        (
            "create-function",
            "CREATE FUNCTION public.malicious() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            None,
        ),
        ("set-role-flpg-node", "SET ROLE flpg_node", None),
        ("set-role-flpg-serverapp", "SET ROLE flpg_serverapp", None),
        ("set-role-flpg-exec", "SET ROLE flpg_exec", None),
        ("set-role-flpg-auditor", "SET ROLE flpg_auditor", None),
        ("set-session-authorization", "SET SESSION AUTHORIZATION flpg", None),
    ]
    # Objects a role owns keep DROP ROLE from dropping it: its run role would outlive
    # the run, still able to log in (what the test asserts is that it does not).
    found.append(("own-large-object", "SELECT lo_create(0)", None))
    found.append(
        (
            "own-default-privileges",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
            None,
        )
    )
    for i, node_role in enumerate(r for r in str(cfg["node-roles"]).split(",") if r):
        found.append(
            (
                f"set-role-node-role-{i}",
                sql.SQL("SET ROLE {}").format(sql.Identifier(node_role)),
                None,
            )
        )
    # Wake-ups carry ids only and are re-read through the policies: allowed (documented).
    found.append(("notify-exec", "SELECT pg_notify('flpg_exec', 'not a run id')", None))
    found.append(("notify-exec-huge", "SELECT pg_notify('flpg_exec', repeat('9', 40))", None))
    return found


def _roles(cfg: Mapping[str, Any]) -> list[Attack]:
    """Make, drop or list run roles; end other roles' sessions."""
    victim = int(cfg["victim-run"])
    role = str(cfg["victim-role"])
    return [
        (
            "clientapp-login",
            "SELECT * FROM flpg_clientapp_login(%s, ARRAY[1,2,3]::bigint[])",
            (victim,),
        ),
        ("serverapp-login", "SELECT * FROM flpg_serverapp_login(%s)", (victim,)),
        ("run-role-drop", "SELECT flpg_run_role_drop(%s)", (role,)),
        ("drop-run-role-internal", "SELECT flpg_drop_run_role(%s)", (role,)),
        (
            "create-run-role-internal",
            "SELECT * FROM flpg_create_run_role(%s, 'serverapp', '{}')",
            (victim,),
        ),
        ("run-roles-collect", "SELECT flpg_run_roles_collect(0)", None),
        ("read-run-roles", "SELECT * FROM run_roles", None),
        ("read-other-principals", "SELECT * FROM principals WHERE role_name <> current_user", None),
        (
            "terminate-other-sessions",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename <> current_user AND datname = current_database()",
            None,
        ),
    ]


def _reads(cfg: Mapping[str, Any]) -> list[Attack]:
    """Read another run's rows: by its id, by their ids, or all but one's own."""
    victim = int(cfg["victim-run"])
    ids = [int(cfg["victim-instruction"]), int(cfg["victim-reply"])]
    return [
        ("read-runs-other", "SELECT run_config FROM runs WHERE id <> flpg_my_run_id()", None),
        ("read-victim-config", "SELECT run_config FROM runs WHERE id = %s", (victim,)),
        ("read-victim-messages", "SELECT * FROM messages WHERE run_id = %s", (victim,)),
        (
            "read-victim-message-ids",
            "SELECT * FROM messages WHERE id = ANY(%s)",
            (ids,),
        ),
        ("read-other-messages", "SELECT * FROM messages WHERE run_id <> flpg_my_run_id()", None),
        ("read-other-arrays", "SELECT * FROM arrays WHERE run_id <> flpg_my_run_id()", None),
        (
            "read-victim-chunks",
            "SELECT data FROM array_chunks WHERE array_id = %s",
            (int(cfg["victim-array"]),),
        ),
        (
            "read-victim-transient-chunks",
            "SELECT data FROM array_chunks_transient WHERE array_id = %s",
            (int(cfg["victim-array"]),),
        ),
        (
            "read-victim-links",
            "SELECT * FROM message_arrays WHERE message_id = ANY(%s)",
            (ids,),
        ),
        ("read-other-run-nodes", "SELECT * FROM run_nodes WHERE run_id <> flpg_my_run_id()", None),
        (
            "read-other-bundles",
            "SELECT bundle FROM apps WHERE hash NOT IN"
            " (SELECT app_hash FROM runs WHERE id = flpg_my_run_id())",
            None,
        ),
    ]


def _writes(cfg: Mapping[str, Any]) -> list[Attack]:
    """Write another run's rows, or rows of one's own that harm another run."""
    victim = int(cfg["victim-run"])
    return [
        ("setval-messages", "SELECT setval('messages_id_seq', 1)", None),
        ("delete-victim-messages", "DELETE FROM messages WHERE run_id = %s", (victim,)),
        ("delete-victim-run", "DELETE FROM runs WHERE id = %s", (victim,)),
        ("delete-victim-log", "DELETE FROM run_logs WHERE id = %s", (int(cfg["victim-log"]),)),
        ("update-victim-log", "UPDATE run_logs SET line = 'pwned' WHERE run_id = %s", (victim,)),
        (
            "insert-victim-log",
            "INSERT INTO run_logs (run_id, stream, line) VALUES (%s, 'stdout', 'FINAL {}')",
            (victim,),
        ),
        (
            "insert-victim-array",
            "INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)"
            " VALUES (%s, 'float64', '{1}', 8, 8, 1, decode(repeat('00', 16), 'hex'))",
            (victim,),
        ),
        (
            "insert-victim-chunk",
            "INSERT INTO array_chunks (array_id, seq, data) VALUES (%s, 99, '\\x00')",
            (int(cfg["victim-array"]),),
        ),
        (
            "insert-victim-transient-chunk",
            "INSERT INTO array_chunks_transient (array_id, seq, data) VALUES (%s, 99, '\\x00')",
            (int(cfg["victim-array"]),),
        ),
        (
            "change-victim-transient-chunk",
            "UPDATE array_chunks_transient SET data = '\\x00' WHERE array_id = %s",
            (int(cfg["victim-array"]),),
        ),
        ("delete-crash-marker", "DELETE FROM transient_marker", None),
        ("insert-crash-marker", "INSERT INTO transient_marker (id) VALUES (2)", None),
        (
            "mark-victim-replies-done",
            "UPDATE messages SET state = 'done', finished_at = now()"
            " WHERE run_id = %s AND reply_to IS NOT NULL",
            (victim,),
        ),
        (
            "cancel-victim-instructions",
            "UPDATE messages SET state = 'cancelled', finished_at = now(), lease_until = NULL"
            " WHERE run_id = %s AND reply_to IS NULL",
            (victim,),
        ),
        (
            "claim-victim-instruction",
            "UPDATE messages SET state = 'claimed', claimed_by = 'malicious',"
            " claimed_at = now(), lease_until = now() + interval '1 hour' WHERE id = %s",
            (int(cfg["victim-instruction"]),),
        ),
        # An id chosen ahead of the sequence: a row of the attacker's own run, but the
        # run that would draw that id later fails to insert its own row (unique key).
        (
            "array-with-chosen-id",
            "INSERT INTO arrays (id, run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)"
            " VALUES (nextval('arrays_id_seq') + 1000000, flpg_my_run_id(), 'float64', '{1}',"
            " 8, 8, 1, decode(repeat('00', 16), 'hex'))",
            None,
        ),
    ]
