-- Audit view run_history, version 1 (migration 0001).
-- One row per run: its outcome, timing, selection size and rounds completed.
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

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
