-- Runs, their node selection, metrics and lifecycle.

-- name: runs_insert
INSERT INTO runs (app_hash, app_name, run_config, priority, max_restarts)
VALUES (%(app_hash)s, %(app_name)s, %(run_config)s, %(priority)s, %(max_restarts)s)
RETURNING id;

-- name: run_nodes_insert
INSERT INTO run_nodes (run_id, node_id)
SELECT %(run_id)s, unnest(%(node_ids)s::bigint[]);

-- name: runs_get
SELECT id, app_hash, app_name, run_config, status, reason, priority, submitted_at,
       started_at, finished_at, exec_id, serverapp_pid, heartbeat_at, stop_requested_at,
       attempt, max_restarts, claimed_at
FROM runs
WHERE id = %(run_id)s;

-- name: runs_list
SELECT run_id, app_name, app_hash, status, reason, num_nodes, rounds_completed,
       submitted_at, started_at, finished_at
FROM run_history
ORDER BY run_id DESC
LIMIT %(limit)s;

-- name: run_nodes_list
SELECT n.id, n.name, n.status
FROM run_nodes rn
JOIN nodes n ON n.id = rn.node_id
WHERE rn.run_id = %(run_id)s
ORDER BY n.id;

-- name: run_nodes_list_online
SELECT rn.node_id
FROM run_nodes rn
JOIN nodes n ON n.id = rn.node_id
WHERE rn.run_id = %(run_id)s AND n.status = 'online'
ORDER BY rn.node_id;

-- name: runs_claim_next
-- Exec: claim the next run to launch, highest priority first, then submission order.
-- One at a time: the exec starts its ServerApp (runs_mark_running) before it claims
-- another, so an exec that dies leaves at most one run `starting`, and the link takes
-- that one back (runs_take_back_unlaunched). `exclude`: runs whose previous
-- ServerApp this exec has not reaped yet.
UPDATE runs SET status = 'starting', exec_id = %(exec_id)s, claimed_at = now()
WHERE id IN (
    SELECT id FROM runs
    WHERE status = 'pending' AND id <> ALL(%(exclude)s::bigint[])
    ORDER BY priority DESC, id
    FOR UPDATE SKIP LOCKED
    LIMIT 1
)
RETURNING id, attempt;

-- name: runs_mark_running
-- The exec started the ServerApp of a run it claimed: only while the run is still
-- `starting` under this exec (not stopped, not taken back by the link meanwhile).
-- Asked again after a lost connection, it answers the run's id if the first time
-- took effect (the snapshot of the SELECT is the one from before the UPDATE).
-- heartbeat_at stays NULL until the ServerApp itself beats (see runs_fail_silent).
WITH marked AS (
    UPDATE runs
    SET status = 'running', started_at = now(), heartbeat_at = NULL, serverapp_pid = %(pid)s
    WHERE id = %(run_id)s AND status = 'starting' AND exec_id = %(exec_id)s
    RETURNING id
)
SELECT id FROM marked
UNION ALL
SELECT id FROM runs
WHERE id = %(run_id)s AND status = 'running' AND exec_id = %(exec_id)s
  AND serverapp_pid = %(pid)s;

-- name: runs_finish
-- Records a run's outcome once: only a run that has not ended changes, and, when an
-- attempt is given, only while that attempt is the run's current one. After a crash
-- emptied the round-transient payloads, nothing ends until the link has recovered
-- (transient_marker; flpg/store/recovery.py): an outcome computed from lost payloads
-- must not stick.
UPDATE runs
SET status = %(status)s, reason = %(reason)s, finished_at = now(), serverapp_pid = NULL
WHERE id = %(run_id)s AND status IN ('pending', 'starting', 'running')
  AND (%(attempt)s::int IS NULL OR attempt = %(attempt)s::int)
  AND EXISTS (SELECT 1 FROM transient_marker)
RETURNING id;

-- name: runs_requeue
-- An ended run goes back to the queue as its next attempt (it continues from its
-- checkpoint). Automatic: only a failed run with restarts left and no stop request.
-- By the user (`flpg resume`): a failed or stopped run that has a checkpoint.
UPDATE runs r
SET status = 'pending', attempt = r.attempt + 1, finished_at = NULL, exec_id = NULL,
    claimed_at = NULL, serverapp_pid = NULL, heartbeat_at = NULL, stop_requested_at = NULL,
    reason = CASE WHEN %(automatic)s
        THEN format('restart %%s of %%s after: %%s', r.attempt, r.max_restarts, r.reason)
        ELSE format('resumed after: %%s', coalesce(r.reason, r.status::text))
    END
WHERE r.id = %(run_id)s
  AND CASE WHEN %(automatic)s
        THEN r.status = 'failed' AND r.attempt <= r.max_restarts
             AND r.stop_requested_at IS NULL
        ELSE r.status IN ('failed', 'stopped')
             AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.run_id = r.id)
      END
RETURNING r.attempt, r.reason;

-- name: runs_delete
-- Retention, step 2 of 2: the ended run with its selection, payloads, logs, metrics.
DELETE FROM runs
WHERE id = %(run_id)s AND status IN ('finished', 'failed', 'stopped');

-- name: runs_heartbeat
-- ServerApp heartbeat of one attempt; returns whether a stop was requested (no row:
-- that attempt is no longer the run's running one).
UPDATE runs SET heartbeat_at = now()
WHERE id = %(run_id)s AND status = 'running' AND attempt = %(attempt)s
RETURNING stop_requested_at IS NOT NULL AS stop_requested;

-- name: runs_request_stop
-- `flpg stop`, in every state that has not ended. A run without a ServerApp yet
-- (pending, or starting: its exec is between claim and launch) is stopped at once;
-- an exec that then tries to mark it running fails and terminates what it started.
-- A running one gets the request: its exec (or, without one, its ServerApp's own
-- heartbeat) ends the ServerApp. Returns the status after the request.
UPDATE runs
SET stop_requested_at = coalesce(stop_requested_at, now()),
    status = CASE WHEN status = 'running' THEN status ELSE 'stopped' END::run_status,
    reason = CASE WHEN status = 'running' THEN reason ELSE 'stopped by user' END,
    finished_at = CASE WHEN status = 'running' THEN NULL ELSE now() END
WHERE id = %(run_id)s AND status IN ('pending', 'starting', 'running')
RETURNING status::text AS status;

-- name: runs_list_stop_requested
SELECT id FROM runs
WHERE exec_id = %(exec_id)s AND status IN ('starting', 'running')
  AND stop_requested_at IS NOT NULL;

-- name: runs_list_ended
-- Node: which of the given runs have ended (or no longer exist).
SELECT i AS id
FROM unnest(%(ids)s::bigint[]) AS i
WHERE NOT EXISTS (
    SELECT 1 FROM runs r
    WHERE r.id = i AND r.status NOT IN ('finished', 'failed', 'stopped')
);

-- name: runs_fail_silent
-- Link sweep: a running ServerApp that stopped heart-beating fails its run
-- (or stops it, when the user had asked for that and no exec was left to do it).
-- One that never beat (still starting: interpreter, imports, bundle) gets
-- `startup` seconds from its launch instead of `after`.
UPDATE runs
SET status = CASE WHEN stop_requested_at IS NOT NULL THEN 'stopped' ELSE 'failed' END::run_status,
    finished_at = now(), serverapp_pid = NULL,
    reason = CASE
        WHEN stop_requested_at IS NOT NULL THEN 'stopped by user'
        WHEN heartbeat_at IS NULL THEN
            format('ServerApp never heart-beat in the %%s s after its launch', %(startup)s)
        ELSE format('ServerApp stopped heart-beating (last heartbeat %%s s ago)',
                    round(extract(epoch FROM now() - heartbeat_at)::numeric, 1))
    END
WHERE status = 'running'
  AND (heartbeat_at < now() - make_interval(secs => %(after)s)
       OR (heartbeat_at IS NULL AND started_at < now() - make_interval(secs => %(startup)s)))
RETURNING id;

-- name: runs_take_back_unlaunched
-- Link sweep: a run still `starting` `after` s after its exec claimed it was never
-- launched (the exec died or lost its connection between the claim and
-- runs_mark_running, which normally takes milliseconds). It goes back to the queue as
-- its next attempt, so whatever the lost launch may have started is fenced off by the
-- attempt number (its mark_running, heartbeat, checkpoint saves and outcome all fail);
-- or, when a stop was requested, it ends `stopped`.
UPDATE runs
SET status = CASE WHEN stop_requested_at IS NULL THEN 'pending' ELSE 'stopped' END::run_status,
    attempt = attempt + CASE WHEN stop_requested_at IS NULL THEN 1 ELSE 0 END,
    finished_at = CASE WHEN stop_requested_at IS NULL THEN NULL ELSE now() END,
    exec_id = CASE WHEN stop_requested_at IS NULL THEN NULL ELSE exec_id END,
    claimed_at = CASE WHEN stop_requested_at IS NULL THEN NULL ELSE claimed_at END,
    serverapp_pid = NULL, heartbeat_at = NULL,
    reason = CASE
        WHEN stop_requested_at IS NOT NULL THEN 'stopped by user'
        ELSE format('exec %%s claimed attempt %%s but did not start its ServerApp within'
                    ' %%s s; queued again as attempt %%s', exec_id, attempt, %(after)s,
                    attempt + 1)
    END
WHERE status = 'starting' AND claimed_at < now() - make_interval(secs => %(after)s)
RETURNING id, status::text AS status, reason;

-- name: runs_restart_lost
-- Link recovery: a run that lost round-transient payloads and has not ended goes back
-- to the queue as its next attempt, which continues from its last checkpoint (the old
-- attempt is fenced off by its number: its checkpoint saves, outcome and heartbeats
-- fail, and its exec stops it). The restart does not use up one of the run's own
-- restarts. A run whose user asked it to stop ends stopped.
UPDATE runs
SET status = CASE WHEN stop_requested_at IS NULL THEN 'pending' ELSE 'stopped' END::run_status,
    attempt = attempt + CASE WHEN stop_requested_at IS NULL THEN 1 ELSE 0 END,
    max_restarts = max_restarts + CASE WHEN stop_requested_at IS NULL THEN 1 ELSE 0 END,
    finished_at = CASE WHEN stop_requested_at IS NULL THEN NULL ELSE now() END,
    exec_id = CASE WHEN stop_requested_at IS NULL THEN NULL ELSE exec_id END,
    claimed_at = CASE WHEN stop_requested_at IS NULL THEN NULL ELSE claimed_at END,
    serverapp_pid = NULL, heartbeat_at = NULL,
    reason = CASE
        WHEN stop_requested_at IS NOT NULL THEN 'stopped by user'
        ELSE format('PostgreSQL crashed and lost round-transient payloads of attempt %%s;'
                    ' queued again as attempt %%s, from its last checkpoint',
                    attempt, attempt + 1)
    END
WHERE id = ANY(%(run_ids)s) AND status IN ('pending', 'starting', 'running')
RETURNING id, status::text AS status, reason;

-- name: round_metrics_upsert
INSERT INTO round_metrics (run_id, round, phase, metrics, num_replies, num_failures)
VALUES (%(run_id)s, %(round)s, %(phase)s, %(metrics)s, %(num_replies)s, %(num_failures)s)
ON CONFLICT (run_id, round, phase) DO UPDATE
    SET metrics = EXCLUDED.metrics,
        num_replies = EXCLUDED.num_replies,
        num_failures = EXCLUDED.num_failures,
        recorded_at = now();

-- name: round_metrics_list_for_run
SELECT round, phase, metrics, num_replies, num_failures, recorded_at
FROM round_metrics
WHERE run_id = %(run_id)s
ORDER BY round, phase;

-- name: runs_notify_exec
SELECT pg_notify('flpg_exec', %(run_id)s::text);

-- name: runs_list_superseded
-- Exec: which of its ServerApps (run id, attempt) no longer run their run's current
-- attempt for this exec (the run ended, was taken back or restarted, or is gone).
SELECT c.id, c.attempt
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS c(id, attempt)
WHERE NOT EXISTS (
    SELECT 1 FROM runs r
    WHERE r.id = c.id AND r.attempt = c.attempt AND r.exec_id = %(exec_id)s
      AND r.status IN ('starting', 'running')
);

-- name: runs_list_starting
-- Node worker: which of the given runs are pending or running (and not being stopped)
-- and select any of the given nodes, so their messages for these nodes are to come.
SELECT r.id
FROM runs r
WHERE r.id = ANY(%(run_ids)s) AND r.status IN ('pending', 'starting', 'running')
  AND r.stop_requested_at IS NULL
  AND EXISTS (
      SELECT 1 FROM run_nodes rn WHERE rn.run_id = r.id AND rn.node_id = ANY(%(node_ids)s)
  )
ORDER BY r.id;

-- name: runs_accounting_get
-- One run's accounting (the run_accounting view; a role sees only the runs it may read).
SELECT run_id, instructions, replies, messages, bytes_sent, bytes_received,
       clientapp_seconds, wait_seconds, launches, serverapp_seconds, queue_seconds
FROM run_accounting
WHERE run_id = %(run_id)s;

-- name: run_nodes_accounting_list
-- One run's accounting per selected node (the node_accounting view), by node id.
SELECT node_id, node_name, instructions, replies, messages, bytes_received, bytes_sent,
       clientapp_seconds, wait_seconds
FROM node_accounting
WHERE run_id = %(run_id)s
ORDER BY node_id;
