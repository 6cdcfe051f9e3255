-- Audit view message_latency, version 1 (migration 0001).
-- One row per instruction: when it was queued, claimed and answered, and how.
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

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
