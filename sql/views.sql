-- Audit views: everything the CLI shows is also plain SQL.
-- Migrations embed a copy of this file; tests check that they agree.

CREATE OR REPLACE VIEW run_history AS
SELECT
    r.id AS run_id,
    r.app_name,
    r.app_hash,
    r.status,
    r.reason,
    r.priority,
    r.run_config,
    r.submitted_at,
    r.started_at,
    r.finished_at,
    r.finished_at - r.started_at AS duration,
    r.exec_id,
    (SELECT count(*) FROM run_nodes rn WHERE rn.run_id = r.id) AS num_nodes,
    (SELECT max(m.round) FROM round_metrics m WHERE m.run_id = r.id AND m.phase = 'train')
        AS rounds_completed
FROM runs r;

CREATE OR REPLACE VIEW round_history AS
SELECT
    m.run_id,
    m.round,
    m.phase,
    m.metrics,
    m.num_replies,
    m.num_failures,
    m.recorded_at
FROM round_metrics m;

CREATE OR REPLACE VIEW message_latency AS
SELECT
    i.id AS message_id,
    i.run_id,
    i.dst_node_id AS node_id,
    i.message_type,
    i.group_id,
    i.state,
    i.attempts,
    i.created_at,
    i.claimed_at,
    rep.created_at AS replied_at,
    i.claimed_at - i.created_at AS queue_wait,
    rep.created_at - i.claimed_at AS handle_time,
    rep.created_at - i.created_at AS round_trip,
    rep.error_code,
    rep.error_reason
FROM messages i
LEFT JOIN messages rep ON rep.reply_to = i.id
WHERE i.reply_to IS NULL;

CREATE OR REPLACE VIEW node_participation AS
SELECT
    n.id AS node_id,
    n.name AS node_name,
    l.run_id,
    count(*) AS instructions,
    count(*) FILTER (WHERE l.replied_at IS NOT NULL AND l.error_code IS NULL) AS replies_ok,
    count(*) FILTER (WHERE l.error_code IS NOT NULL) AS replies_error,
    count(*) FILTER (WHERE l.replied_at IS NULL) AS unanswered,
    avg(l.round_trip) AS mean_round_trip
FROM message_latency l
JOIN nodes n ON n.id = l.node_id
GROUP BY n.id, n.name, l.run_id;
