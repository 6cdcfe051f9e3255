-- Audit view round_history, version 1 (migration 0001).
-- One row per run, round and phase: the aggregated metrics and reply counts.
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

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
