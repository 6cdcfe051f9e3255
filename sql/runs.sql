-- Runs, their node selection, metrics and lifecycle.

-- name: run_insert
INSERT INTO runs (app_hash, app_name, run_config, priority, max_restarts)
VALUES (%(app_hash)s, %(app_name)s, %(run_config)s, %(priority)s, %(max_restarts)s)
RETURNING id;

-- name: run_nodes_insert
INSERT INTO run_nodes (run_id, node_id)
SELECT %(run_id)s, unnest(%(node_ids)s::bigint[]);

-- name: run_get
SELECT id, app_hash, app_name, run_config, status, reason, priority, submitted_at,
       started_at, finished_at, exec_id, serverapp_pid, heartbeat_at, stop_requested_at,
       attempt, max_restarts
FROM runs
WHERE id = %(run_id)s;

-- name: run_list
SELECT run_id, app_name, status, reason, num_nodes, rounds_completed,
       submitted_at, started_at, finished_at
FROM run_history
ORDER BY run_id DESC
LIMIT %(limit)s;

-- name: run_selection
SELECT n.id, n.name, n.status
FROM run_nodes rn
JOIN nodes n ON n.id = rn.node_id
WHERE rn.run_id = %(run_id)s
ORDER BY n.id;

-- name: run_online_node_ids
SELECT rn.node_id
FROM run_nodes rn
JOIN nodes n ON n.id = rn.node_id
WHERE rn.run_id = %(run_id)s AND n.status = 'online'
ORDER BY rn.node_id;

-- name: runs_claim_pending
-- Exec: claim runs to launch, highest priority first, then submission order.
UPDATE runs SET status = 'starting', exec_id = %(exec_id)s
WHERE id IN (
    SELECT id FROM runs
    WHERE status = 'pending'
    ORDER BY priority DESC, id
    FOR UPDATE SKIP LOCKED
    LIMIT %(limit)s
)
RETURNING id, attempt;

-- name: run_mark_running
-- heartbeat_at stays NULL until the ServerApp itself beats (see runs_fail_silent).
UPDATE runs
SET status = 'running', started_at = now(), heartbeat_at = NULL, serverapp_pid = %(pid)s
WHERE id = %(run_id)s AND status = 'starting' AND exec_id = %(exec_id)s
RETURNING id;

-- name: run_finish
-- Records a run's outcome once: only a run that has not ended changes, and, when an
-- attempt is given, only while that attempt is the run's current one.
UPDATE runs
SET status = %(status)s, reason = %(reason)s, finished_at = now(), serverapp_pid = NULL
WHERE id = %(run_id)s AND status IN ('pending', 'starting', 'running')
  AND (%(attempt)s::int IS NULL OR attempt = %(attempt)s::int)
RETURNING id;

-- name: run_requeue
-- An ended run goes back to the queue as its next attempt (it continues from its
-- checkpoint). Automatic: only a failed run with restarts left and no stop request.
-- By the user (`flpg resume`): a failed or stopped run that has a checkpoint.
UPDATE runs r
SET status = 'pending', attempt = r.attempt + 1, finished_at = NULL, exec_id = NULL,
    serverapp_pid = NULL, heartbeat_at = NULL, stop_requested_at = NULL,
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

-- name: run_cancel_messages
-- Undelivered instructions of an ended run are cancelled (kept, not deleted).
UPDATE messages SET state = 'cancelled', finished_at = now(), lease_until = NULL
WHERE run_id = %(run_id)s AND reply_to IS NULL AND state IN ('queued', 'claimed');

-- name: run_delete_messages
-- Retention, step 1 of 2 (same transaction as run_delete): an ended run's messages;
-- their array links and replies cascade. Deleting the run alone fails: its arrays
-- cascade fires before the message_arrays cascade and fk_message_arrays_array_id
-- (NO ACTION) still sees the links.
DELETE FROM messages m
USING runs r
WHERE m.run_id = %(run_id)s AND r.id = m.run_id
  AND r.status IN ('finished', 'failed', 'stopped');

-- name: run_delete
-- Retention, step 2 of 2: the ended run with its selection, payloads, logs, metrics.
DELETE FROM runs
WHERE id = %(run_id)s AND status IN ('finished', 'failed', 'stopped');

-- name: run_heartbeat
-- ServerApp heartbeat of one attempt; returns whether a stop was requested (no row:
-- that attempt is no longer the run's running one).
UPDATE runs SET heartbeat_at = now()
WHERE id = %(run_id)s AND status = 'running' AND attempt = %(attempt)s
RETURNING stop_requested_at IS NOT NULL AS stop_requested;

-- name: run_request_stop
UPDATE runs SET stop_requested_at = coalesce(stop_requested_at, now())
WHERE id = %(run_id)s AND status IN ('starting', 'running')
RETURNING id;

-- name: runs_stop_requested
SELECT id FROM runs
WHERE exec_id = %(exec_id)s AND status IN ('starting', 'running')
  AND stop_requested_at IS NOT NULL;

-- name: runs_ended
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

-- name: round_metrics_upsert
INSERT INTO round_metrics (run_id, round, phase, metrics, num_replies, num_failures)
VALUES (%(run_id)s, %(round)s, %(phase)s, %(metrics)s, %(num_replies)s, %(num_failures)s)
ON CONFLICT (run_id, round, phase) DO UPDATE
    SET metrics = EXCLUDED.metrics,
        num_replies = EXCLUDED.num_replies,
        num_failures = EXCLUDED.num_failures,
        recorded_at = now();

-- name: round_metrics_for_run
SELECT round, phase, metrics, num_replies, num_failures, recorded_at
FROM round_metrics
WHERE run_id = %(run_id)s
ORDER BY round, phase;

-- name: notify_exec
SELECT pg_notify('flpg_exec', %(run_id)s::text);
