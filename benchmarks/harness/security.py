"""How a benchmark federation's workers connect, and what row-level security does.

Three modes (`FlpgSide.fedavg(..., security=MODE)`, `FlpgSide.throughput(...)`):

- `admin` (the default, what `vs_flower.py` measures): the link, exec and node
  workers connect with the database's admin URL (`--db`), which owns the tables and
  so bypasses row-level security; the ServerApp and ClientApps connect as their run
  roles (migration 0008) and go through the policies.
- `roles`: admin enrols a link (`flpg link enroll`), an exec (`flpg exec enroll`)
  and each node (`flpg node enroll NAME --node-config ...`, once per name); the
  workers start with `--credentials FILE` (a node worker with `--name` and neither
  `--node-config` nor `--label`: an enrolled node's are set at enrolment). Every
  process then runs as its own role, through the policies.
- `no-rls`: as `admin`, and after migrating, row-level security is disabled on
  every table of the database that has it, so no policy predicate runs anywhere
  (run roles included; grants still apply).

`policy_sql` (any mode) is SQL that admin runs right after migrating, e.g. a
candidate policy change measured before it becomes a migration.

Roles belong to the cluster, not to the database: `database_roles` lists the
enrolled and run roles a database made, and `drop_roles` drops them once the
database is gone (its privileges went with it).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from harness.procs import HarnessError, ProcessSet

MODES = ("admin", "roles", "no-rls")


class WorkerSecurity:
    """The credentials of one federation's workers in one of `MODES`."""

    def __init__(
        self,
        mode: str,
        flpg: str,
        url: str,
        procs: ProcessSet,
        creddir: Path,
        policy_sql: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"security mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.flpg = flpg
        self.url = url
        self.procs = procs
        self.creddir = creddir
        self.policy_sql = policy_sql
        self._nodes: dict[str, Path] = {}

    def after_migrate(self) -> None:
        """Run `policy_sql`; `no-rls`: disable row-level security on every table that
        has it."""
        if self.policy_sql:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(self.policy_sql.encode())
        if self.mode == "no-rls":
            disabled = disable_rls(self.url)
            if not disabled:
                raise HarnessError("no table had row-level security to disable")

    def worker_args(self, kind: str) -> list[str]:
        """Extra arguments of `flpg link` or `flpg exec` (`--credentials F` for `roles`)."""
        if self.mode != "roles":
            return []
        return ["--credentials", str(self._enrol(kind, "bench"))]

    def node_args(self, name: str, node_config: str) -> list[str]:
        """Extra arguments of `flpg node --name NAME`: the node config (admin, which
        registers), or the credentials of NAME's enrolment (made on first use, the
        node config set there)."""
        if self.mode != "roles":
            return ["--node-config", node_config]
        cred = self._nodes.get(name)
        if cred is None:
            cred = self._nodes[name] = self._enrol("node", name, "--node-config", node_config)
        return ["--credentials", str(cred)]

    def _enrol(self, kind: str, name: str, *options: str) -> Path:
        self.creddir.mkdir(parents=True, exist_ok=True)
        out = self.creddir / f"{kind}-{name}.json"
        argv = [self.flpg, kind, "enroll", name, *options, "--db", self.url, "--out", str(out)]
        done = self.procs.run(argv, timeout=120)
        if done.returncode != 0:
            raise HarnessError(
                f"flpg {kind} enroll {name} exited {done.returncode}: {done.stderr.strip()}"
            )
        return out


# Triggers that exist only to feed row-level security (trust.v3's link audience), and
# the NOT NULL columns they fill: `no-rls` disables them too (the columns then stay
# empty), so that "off" carries none of the policies' cost.
RLS_TRIGGERS = (("message_arrays", "tg_message_arrays_audience", ("run_id", "node_id")),)


def disable_rls(url: str) -> list[str]:
    """`ALTER TABLE t DISABLE ROW LEVEL SECURITY` on every table of schema public
    that has it enabled, and RLS_TRIGGERS disabled where they exist; the tables'
    names."""
    with psycopg.connect(url, autocommit=True) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relrowsecurity"
                " ORDER BY c.relname"
            )
        ]
        for name in names:
            conn.execute(
                sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(sql.Identifier(name))
            )
        for table, trigger, columns in RLS_TRIGGERS:
            found = conn.execute(
                "SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass(%s)",
                [trigger, f"public.{table}"],
            ).fetchone()
            if found:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                        sql.Identifier(table), sql.Identifier(trigger)
                    )
                )
                for column in columns:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                            sql.Identifier(table), sql.Identifier(column)
                        )
                    )
    return names


def database_roles(url: str) -> list[str]:
    """The login roles this database enrolled or made for runs (empty before 0007)."""
    found: set[str] = set()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("principals", "run_roles"):
            exists = conn.execute("SELECT to_regclass(%s)", [f"public.{table}"]).fetchone()
            if exists is None or exists[0] is None:
                continue
            query = sql.SQL("SELECT role_name FROM {}").format(sql.Identifier(table))
            found.update(str(r[0]) for r in conn.execute(query))
    return sorted(found)


def drop_roles(admin_url: str, names: list[str]) -> list[str]:
    """Drop the login roles `names` (ending their sessions); those that failed, with why."""
    failed: list[str] = []
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
            [names],
        )
        for name in names:
            try:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                failed.append(f"{name}: {str(exc).strip()}")
    return failed
