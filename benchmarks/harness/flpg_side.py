"""flpg side: one configuration on a fresh federation in a fresh database.

For a FedAvg configuration (N nodes, model size S, R rounds) it creates a database
in the invocation's cluster, runs `flpg db upgrade`, starts `flpg link`, `flpg exec`
and N `flpg node --name nodeI --node-config "partition-id=I num-partitions=N"`
processes (one process per node, as Flower has one SuperNode per node; for the
virtual-node extra one worker serves all N node ids, with `flpg node --virtual N`
when the installed flpg has it, else `virtual_nodes.py`), waits until
the N nodes are online, then submits `benchmarks/apps/bench_flpg` with `flpg run`.
Everything it reports comes from the database's own timestamps:

- round 1 starts at the run's first `arrays.created_at` (the ServerApp begins writing
  the broadcast payload, after sampling its nodes), round k ends at the train
  `round_metrics.recorded_at` of round k (aggregate done);
- start-up is from the moment the harness launched `flpg run` (wall clock, same
  machine) to round 1's start; total is to `runs.finished_at`.

Peak memory is sampled (see `rss`) for "server" (the `flpg link` and `flpg exec`
trees, which include the run's ServerApp process), "serverapp" (the ServerApp
process alone), "node" (node0's worker and its ClientApp process) and "pg" (the
PostgreSQL cluster, PSS).

`fedavg(..., run_config=...)` appends `k=v` items (`--flpg-run-config`, a variant's)
to the run config the harness builds, as a second `flpg run --run-config` (a later
one wins a key). The workers themselves live in `flpg_federation`.

`security` (`fedavg`, `throughput`) chooses how the workers connect: as admin (the
default), as their own enrolled roles, or as admin with row-level security disabled
(see `security.py`). The roles a database made are dropped with it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import psycopg

from harness.cluster import BenchCluster
from harness.flpg_federation import (
    ConfigTimeout,
    Deadline,
    FlpgFederation,
    Progress,
    flpg_executable,
    query,
)
from harness.procs import HarnessError, is_ours
from harness.results import Config, Outcome, model_floats
from harness.rss import TreeSampler, children_map, descendants, tree_kib
from harness.security import database_roles, drop_roles

__all__ = ["FlpgSide", "RunTimes", "flpg_executable", "run_times"]


@dataclass(frozen=True)
class RunTimes:
    round_seconds: list[float]
    startup: float
    total: float
    breakdown: str
    """Start-up split: `flpg run` until the run row exists, until the exec started
    the ServerApp, until the first payload write."""


def run_times(url: str, run_id: int, rounds: int, t_submit: float) -> RunTimes:
    rows = query(
        url,
        """
        SELECT r.submitted_at, r.started_at, r.finished_at,
               (SELECT min(a.created_at) FROM arrays a WHERE a.run_id = r.id),
               (SELECT array_agg(rm.recorded_at ORDER BY rm.round) FROM round_metrics rm
                WHERE rm.run_id = r.id AND rm.phase = 'train')
        FROM runs r WHERE r.id = %s
        """,
        [run_id],
    )
    submitted, started, finished, first_push, ends = rows[0]
    if first_push is None or not ends or len(ends) != rounds:
        raise HarnessError(
            f"run {run_id} finished without the expected records: first payload "
            f"{first_push}, {len(ends or [])} train round(s) of {rounds}"
        )
    marks: list[datetime] = [first_push, *ends]
    phases = last_round_phases(url, run_id, rounds, marks[-2], marks[-1])
    return RunTimes(
        [(b - a).total_seconds() for a, b in pairwise(marks)],
        first_push.timestamp() - t_submit,
        finished.timestamp() - t_submit,
        f"submit {submitted.timestamp() - t_submit:.2f} + exec "
        f"{(started - submitted).total_seconds():.2f} + ServerApp "
        f"{(first_push - started).total_seconds():.2f}; {phases}",
    )


def last_round_phases(
    url: str, run_id: int, rounds: int, round_start: datetime, round_end: datetime
) -> str:
    """Where the last round's time went, from message timestamps: until its
    instructions exist (previous round's checkpoint, broadcast write), until the
    last claim, the slowest claim-to-reply, and from the last reply to the round's
    record (the ServerApp reading and folding the replies)."""
    rows = query(
        url,
        """
        SELECT min(i.created_at), max(i.claimed_at), max(r.created_at),
               max(r.created_at - i.claimed_at)
        FROM messages i JOIN messages r ON r.reply_to = i.id
        WHERE i.run_id = %s AND i.reply_to IS NULL AND i.group_id = %s
        """,
        [run_id, str(rounds)],
    )
    pushed, last_claim, last_reply, slowest = rows[0]
    if pushed is None:
        return "last round: no messages found"
    return (
        f"last round: to instructions {(pushed - round_start).total_seconds():.2f}, "
        f"to last claim {(last_claim - pushed).total_seconds():.2f}, slowest node "
        f"{slowest.total_seconds():.2f}, last reply to aggregate "
        f"{(round_end - last_reply).total_seconds():.2f}"
    )


class FlpgSide:
    """Runs flpg configurations on the invocation's cluster."""

    def __init__(self, cluster: BenchCluster, workdir: Path, progress: Progress) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.progress = progress
        self.counter = 0
        self.policy_sql: str | None = None
        """SQL run as admin in each new database right after migrating (see security.py)."""

    def _database(self, slug: str) -> tuple[str, str]:
        self.counter += 1
        name = f"flpg_{self.counter}_{slug}"
        return name, self.cluster.create_database(name)

    def _finish(
        self, fed: FlpgFederation, sampler: TreeSampler | None, db: str, outcome: Outcome
    ) -> None:
        if sampler is not None:
            outcome.rss_mib = sampler.stop()
            outcome.other_cpu = sampler.other_cpu
        killed = fed.stop()
        if killed:
            self.progress(f"flpg {outcome.config.label}: had to kill: " + "; ".join(killed))
        try:
            roles = database_roles(fed.url)
        except psycopg.Error as exc:
            roles = []
            self.progress(f"flpg {outcome.config.label}: could not list its roles: {exc}")
        self.cluster.drop_database(db)
        failed = drop_roles(self.cluster.admin_url, roles) if roles else []
        if failed:
            self.progress(f"flpg {outcome.config.label}: roles left: " + "; ".join(failed))

    def fedavg(
        self,
        config: Config,
        timeout: float,
        *,
        virtual: bool = False,
        virtual_concurrency: int = 8,
        security: str = "admin",
        run_config: str = "",
        variant: str = "",
    ) -> Outcome:
        """One FedAvg configuration; `virtual` serves all nodes from one worker process
        (as admin, whatever `security` says). `run_config` (`k=v` items) is appended to
        the harness's run config; `variant` names the outcome's flavour."""
        outcome = Outcome("flpg", config, variant=variant, run_config=run_config)
        if run_config:
            outcome.note = f"run config + {run_config}; "
        began = time.monotonic()
        deadline = Deadline(timeout)
        db, url = self._database(config.slug + ("_virtual" if virtual else ""))
        fed = FlpgFederation(
            f"flpg-{config.slug}", url, self.workdir / db, security, self.policy_sql
        )
        sampler: TreeSampler | None = None
        try:
            fed.migrate()
            fed.start_control()
            if virtual:
                _, how = fed.start_virtual(config.nodes, virtual_concurrency)
                outcome.note += f"one worker process ({how}, concurrency {virtual_concurrency}); "
            else:
                for i in range(config.nodes):
                    fed.start_node(f"node{i}", i, config.nodes, f"node{i}")
            sampler = TreeSampler()
            sampler.add("server", fed.server_roots)
            sampler.add("serverapp", fed.serverapp_roots)
            node0 = fed.nodes[0].pid
            sampler.add("node", lambda: [node0])
            sampler.add("pg", self.cluster.postmaster_pid, mode="pss")
            sampler.start(is_ours)
            fed.wait_online(config.nodes, deadline)
            base_config = (
                f"num-server-rounds={config.rounds} model-floats={model_floats(config.nbytes)} "
                f"min-nodes={config.nodes} round-timeout={max(timeout, 60.0)}"
            )
            run_id, t_submit = fed.submit(base_config, run_config)
            fed.wait_run(run_id, deadline)
            times = run_times(url, run_id, config.rounds, t_submit)
            outcome.round_seconds = times.round_seconds
            outcome.startup = times.startup
            outcome.total = times.total
            outcome.note += times.breakdown
        except ConfigTimeout as exc:
            outcome.status, outcome.reason = "timeout", str(exc)
        except (HarnessError, psycopg.Error) as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        finally:
            self._finish(fed, sampler, db, outcome)
            outcome.wall = time.monotonic() - began
        return outcome

    def throughput(
        self, workers: int, messages: int, timeout: float, *, security: str = "admin"
    ) -> Outcome:
        """`messages` tiny query messages to one node id served by `workers` workers."""
        config = Config(1, 0, 1)
        outcome = Outcome("flpg", config)
        began = time.monotonic()
        deadline = Deadline(timeout)
        db, url = self._database(f"throughput_w{workers}")
        fed = FlpgFederation(f"flpg-tp{workers}", url, self.workdir / db, security, self.policy_sql)
        sampler: TreeSampler | None = None
        try:
            fed.migrate()
            fed.start_control()
            for i in range(workers):
                fed.start_node("node0", 0, 1, f"node0-worker{i}")
            sampler = TreeSampler()
            sampler.add("server", fed.server_roots)
            node_pids = [p.pid for p in fed.nodes]
            sampler.add("node", lambda: node_pids)
            sampler.start(is_ours)
            fed.wait_online(1, deadline)
            time.sleep(1.0)  # every worker registered and listening, not only the first
            run_id, t_submit = fed.submit(f"mode=throughput min-nodes=1 messages={messages}")
            fed.wait_run(run_id, deadline)
            rows = query(
                url,
                """
                SELECT count(*) FILTER (WHERE reply_to IS NOT NULL),
                       min(created_at) FILTER (WHERE reply_to IS NULL),
                       min(created_at) FILTER (WHERE reply_to IS NOT NULL),
                       max(created_at) FILTER (WHERE reply_to IS NOT NULL),
                       count(DISTINCT claimed_by) FILTER (WHERE reply_to IS NULL)
                FROM messages WHERE run_id = %s
                """,
                [run_id],
            )
            replies, first_push, first_reply, last_reply, claimers = rows[0]
            window = (last_reply - first_push).total_seconds()
            steady = (last_reply - first_reply).total_seconds()
            outcome.extra = {
                "messages": float(replies),
                "rate": replies / window if window > 0 else float("nan"),
                "steady_rate": (replies - 1) / steady if steady > 0 else float("nan"),
                "workers_used": float(claimers or 0),
                "window": window,
            }
            outcome.startup = first_push.timestamp() - t_submit
        except ConfigTimeout as exc:
            outcome.status, outcome.reason = "timeout", str(exc)
        except (HarnessError, psycopg.Error) as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        finally:
            self._finish(fed, sampler, db, outcome)
            outcome.wall = time.monotonic() - began
        return outcome

    def idle_node(self, timeout: float) -> Outcome:
        """RSS of one idle node worker: fresh, then after serving a 1-round 4 B run
        (once its ClientApp process was retired)."""
        config = Config(1, 4, 1)
        outcome = Outcome("flpg", config)
        began = time.monotonic()
        deadline = Deadline(timeout)
        db, url = self._database("idle")
        fed = FlpgFederation("flpg-idle", url, self.workdir / db)
        try:
            fed.migrate()
            fed.start_control()
            node = fed.start_node("node0", 0, 1, "node0")
            fed.wait_online(1, deadline)
            time.sleep(3.0)
            fresh: list[int] = []
            for _ in range(5):
                fresh.append(tree_kib([node.pid]))
                time.sleep(0.2)
            outcome.extra["fresh_mib"] = statistics.median(fresh) / 1024
            run_id, _ = fed.submit("num-server-rounds=1 model-floats=1 min-nodes=1")
            fed.wait_run(run_id, deadline)
            # The worker retires a finished run's ClientApp process on its next
            # heartbeat tick; wait until the worker is alone again.
            while _tree_size(node.pid) > 1 and deadline.remaining() > 0:
                time.sleep(0.25)
            time.sleep(1.0)
            outcome.extra["after_run_mib"] = tree_kib([node.pid]) / 1024
            outcome.extra["after_run_procs"] = float(_tree_size(node.pid))
        except ConfigTimeout as exc:
            outcome.status, outcome.reason = "timeout", str(exc)
        except (HarnessError, psycopg.Error) as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        finally:
            self._finish(fed, None, db, outcome)
            outcome.wall = time.monotonic() - began
        return outcome


def _tree_size(pid: int) -> int:
    return len(descendants([pid], children_map()))
