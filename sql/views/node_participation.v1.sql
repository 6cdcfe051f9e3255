-- Audit view node_participation, version 1 (migration 0001).
-- One row per node and run: instructions sent, answered, failed, unanswered.
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

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
