-- The dashboard (`flpg ui`): read-only queries that span tables, one per view of a page.
-- Every time is seconds since the epoch (float8) and every count a bigint, so rows
-- become JSON as they are. Row-level security decides what each role sees: a user's
-- dashboard shows that user's runs only.

-- name: ui_session_read_only
-- Every later transaction of the dashboard's connections is read-only: the server
-- refuses a write whatever the code asks.
SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;

-- name: ui_runs_list
-- The runs list, newest first; each filter is NULL for "any". `q` matches the run id
-- exactly, or any part of the app name, the user or the reason (case-insensitive). The
-- user is the name `flpg user add` gave the submitting role (else the role itself).
SELECT r.id AS run_id,
       r.status::text AS status,
       coalesce(p.user_name, r.submitted_by) AS "user",
       r.app_name,
       (SELECT count(*) FROM run_nodes rn WHERE rn.run_id = r.id) AS num_nodes,
       (SELECT max(m.round) FROM round_metrics m WHERE m.run_id = r.id AND m.phase = 'train')
           AS rounds_done,
       r.run_config ->> 'num-server-rounds' AS rounds_total,
       extract(epoch FROM r.submitted_at)::float8 AS submitted_at,
       extract(epoch FROM r.started_at)::float8 AS started_at,
       extract(epoch FROM r.finished_at)::float8 AS finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8 AS duration_s,
       r.reason,
       r.attempt
FROM runs r
LEFT JOIN principals p ON p.role_name = r.submitted_by
WHERE (%(status)s::text IS NULL OR r.status::text = %(status)s::text)
  AND (%(user)s::text IS NULL OR coalesce(p.user_name, r.submitted_by) = %(user)s::text)
  AND (%(app)s::text IS NULL OR r.app_name = %(app)s::text)
  AND (%(q)s::text IS NULL
       OR r.id::text = %(q)s::text
       OR strpos(lower(concat_ws(' ', r.app_name, p.user_name, r.submitted_by, r.reason)),
                 lower(%(q)s::text)) > 0)
ORDER BY r.id DESC
LIMIT %(limit)s;

-- name: ui_runs_filters
-- The users and apps the runs list can be filtered by (of the runs this role sees).
SELECT array(SELECT DISTINCT coalesce(p.user_name, r.submitted_by)
             FROM runs r LEFT JOIN principals p ON p.role_name = r.submitted_by
             ORDER BY 1) AS users,
       array(SELECT DISTINCT app_name FROM runs ORDER BY 1) AS apps;

-- name: ui_run_get
-- One run with its latest checkpoint; no row if there is none (or this role may not see it).
SELECT r.id AS run_id,
       r.status::text AS status,
       coalesce(p.user_name, r.submitted_by) AS "user",
       r.submitted_by AS role,
       r.app_name,
       r.app_hash,
       r.run_config,
       r.reason,
       r.priority,
       r.attempt,
       r.max_restarts,
       r.exec_id,
       r.stop_requested_at IS NOT NULL AS stop_requested,
       (SELECT count(*) FROM run_nodes rn WHERE rn.run_id = r.id) AS num_nodes,
       (SELECT max(m.round) FROM round_metrics m WHERE m.run_id = r.id AND m.phase = 'train')
           AS rounds_done,
       r.run_config ->> 'num-server-rounds' AS rounds_total,
       extract(epoch FROM r.submitted_at)::float8 AS submitted_at,
       extract(epoch FROM r.started_at)::float8 AS started_at,
       extract(epoch FROM r.finished_at)::float8 AS finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8 AS duration_s,
       c.round AS checkpoint_round,
       c.attempt AS checkpoint_attempt,
       extract(epoch FROM c.saved_at)::float8 AS checkpoint_saved_at,
       (SELECT count(*) FROM checkpoint_arrays ca WHERE ca.run_id = r.id) AS checkpoint_arrays,
       (SELECT coalesce(sum(a.nbytes), 0)::bigint
        FROM checkpoint_arrays ca JOIN arrays a ON a.id = ca.array_id
        WHERE ca.run_id = r.id) AS checkpoint_bytes
FROM runs r
LEFT JOIN principals p ON p.role_name = r.submitted_by
LEFT JOIN checkpoints c ON c.run_id = r.id
WHERE r.id = %(run_id)s;

-- name: ui_run_rounds
-- A run's aggregated metrics per round and phase (the round_history audit view).
SELECT round, phase, metrics, num_replies, num_failures,
       extract(epoch FROM recorded_at)::float8 AS recorded_at
FROM round_history
WHERE run_id = %(run_id)s
ORDER BY round, phase;

-- name: ui_run_nodes
-- A run's node selection, each node with its instructions by state, its replies and
-- their latencies in seconds (as the message_latency audit view measures them: queued
-- to claimed, claimed to replied, queued to replied).
SELECT n.id AS node_id,
       n.name,
       n.status::text AS status,
       count(i.id) AS instructions,
       count(*) FILTER (WHERE i.state = 'queued') AS queued,
       count(*) FILTER (WHERE i.state = 'claimed') AS claimed,
       count(rep.id) FILTER (WHERE rep.error_code IS NULL) AS replies_ok,
       count(rep.id) FILTER (WHERE rep.error_code IS NOT NULL) AS replies_error,
       avg(extract(epoch FROM i.claimed_at - i.created_at))::float8 AS mean_queue_wait_s,
       avg(extract(epoch FROM rep.created_at - i.claimed_at))::float8 AS mean_handle_s,
       avg(extract(epoch FROM rep.created_at - i.created_at))::float8 AS mean_round_trip_s,
       max(extract(epoch FROM rep.created_at - i.created_at))::float8 AS max_round_trip_s
FROM run_nodes rn
JOIN nodes n ON n.id = rn.node_id
LEFT JOIN messages i ON i.run_id = rn.run_id AND i.dst_node_id = rn.node_id
                    AND i.reply_to IS NULL
LEFT JOIN messages rep ON rep.reply_to = i.id
WHERE rn.run_id = %(run_id)s
GROUP BY n.id, n.name, n.status
ORDER BY n.id;

-- name: ui_run_messages
-- A run's newest instructions with their reply and latencies in seconds.
SELECT i.id AS message_id,
       i.dst_node_id AS node_id,
       i.group_id,
       i.message_type,
       i.state::text AS state,
       i.attempts,
       extract(epoch FROM i.created_at)::float8 AS created_at,
       extract(epoch FROM i.claimed_at - i.created_at)::float8 AS queue_wait_s,
       extract(epoch FROM rep.created_at - i.claimed_at)::float8 AS handle_s,
       extract(epoch FROM rep.created_at - i.created_at)::float8 AS round_trip_s,
       rep.error_code,
       rep.error_reason
FROM messages i
LEFT JOIN messages rep ON rep.reply_to = i.id
WHERE i.run_id = %(run_id)s AND i.reply_to IS NULL
ORDER BY i.id DESC
LIMIT %(limit)s;

-- name: ui_nodes_list
-- The federation's nodes, each with what it serves now: the runs that have not ended
-- and select it (of those this role sees) and the instructions it holds claimed.
SELECT n.id AS node_id,
       n.name,
       n.status::text AS status,
       n.labels,
       n.node_config,
       extract(epoch FROM n.registered_at)::float8 AS registered_at,
       extract(epoch FROM n.last_seen_at)::float8 AS last_seen_at,
       extract(epoch FROM now() - n.last_seen_at)::float8 AS last_seen_age_s,
       array(SELECT r.id FROM run_nodes rn JOIN runs r ON r.id = rn.run_id
             WHERE rn.node_id = n.id AND r.status IN ('pending', 'starting', 'running')
             ORDER BY r.id) AS serving_runs,
       (SELECT count(*) FROM messages m
        WHERE m.dst_node_id = n.id AND m.state = 'claimed') AS claimed_messages
FROM nodes n
WHERE n.removed_at IS NULL
ORDER BY n.id;

-- name: ui_watch_state
-- What the dashboard's event hub watches: the runs to LISTEN on (not ended, or ended
-- in the last `recent` seconds: their last log lines may still come) and the nodes,
-- and a fingerprint of what changes without a NOTIFY (claims, node status, round
-- metrics), so its safety-net poll notices those too.
SELECT array(SELECT id FROM runs
             WHERE status IN ('pending', 'starting', 'running')
                OR finished_at > now() - make_interval(secs => %(recent)s)
             ORDER BY id) AS run_ids,
       array(SELECT id FROM nodes WHERE removed_at IS NULL ORDER BY id LIMIT %(max_nodes)s)
           AS node_ids,
       (SELECT md5(coalesce(string_agg(id || ':' || status || ':' || attempt, ',' ORDER BY id), ''))
        FROM runs
        WHERE status IN ('pending', 'starting', 'running')
           OR finished_at > now() - make_interval(secs => %(recent)s)) AS runs_digest,
       (SELECT coalesce(max(id), 0) FROM runs) AS runs_max_id,
       (SELECT md5(coalesce(string_agg(id || ':' || status, ',' ORDER BY id), ''))
        FROM nodes WHERE removed_at IS NULL) AS nodes_digest;

-- name: ui_watch_run
-- The fingerprint of one run's page for the safety-net poll: its status, its round
-- metrics, its newest log line and instruction.
SELECT r.id AS run_id,
       r.status::text AS status,
       r.attempt,
       (SELECT count(*) FROM round_metrics m WHERE m.run_id = r.id) AS rounds,
       (SELECT max(m.recorded_at) FROM round_metrics m WHERE m.run_id = r.id)::text
           AS rounds_at,
       (SELECT coalesce(max(l.id), 0) FROM run_logs l WHERE l.run_id = r.id) AS log_id,
       (SELECT count(*) FROM messages i WHERE i.run_id = r.id AND i.state = 'done') AS done
FROM runs r
WHERE r.id = ANY(%(run_ids)s::bigint[])
ORDER BY r.id;

-- name: ui_accounting_views
-- Which accounting views exist and this role may read (NULL: the view does not exist).
SELECT CASE WHEN to_regclass('run_accounting') IS NOT NULL
            THEN has_table_privilege(to_regclass('run_accounting'), 'SELECT') END AS run_view,
       CASE WHEN to_regclass('node_accounting') IS NOT NULL
            THEN has_table_privilege(to_regclass('node_accounting'), 'SELECT') END AS node_view;

-- name: ui_run_accounting
-- The run's row of run_accounting, whatever its columns (ask ui_accounting_views first).
SELECT to_jsonb(a) AS row FROM run_accounting a WHERE a.run_id = %(run_id)s;

-- name: ui_node_accounting
-- The run's rows of node_accounting, one per node (ask ui_accounting_views first).
SELECT to_jsonb(a) AS row FROM node_accounting a WHERE a.run_id = %(run_id)s;
