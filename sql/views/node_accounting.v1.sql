-- Audit view node_accounting, version 1 (migration 0011).
-- One row per run and selected node: what the node was sent and answered, and the
-- time its instructions waited and its ClientApp computed. Bytes are payload bytes
-- (the `nbytes` of the arrays a message carries; an array carried by N messages
-- counts N times), seen from the node: `bytes_received` by instructions addressed to
-- it, `bytes_sent` by its replies. Times refer to each instruction's last claim, as
-- in message_latency: `wait_seconds` created -> claimed, `clientapp_seconds` claimed
-- -> reply written, for the instructions the node answered (state `done`).
-- security_invoker: each role sees the rows of the runs it may read (a user its own
-- runs, the auditor all).
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

CREATE OR REPLACE VIEW node_accounting WITH (security_invoker = true) AS
SELECT
    rn.run_id,
    rn.node_id,
    n.name AS node_name,
    coalesce(mm.instructions, 0) AS instructions,
    coalesce(mm.replies, 0) AS replies,
    coalesce(mm.instructions, 0) + coalesce(mm.replies, 0) AS messages,
    coalesce(mm.bytes_received, 0)::bigint AS bytes_received,
    coalesce(mm.bytes_sent, 0)::bigint AS bytes_sent,
    coalesce(mm.clientapp_seconds, 0)::float8 AS clientapp_seconds,
    coalesce(mm.wait_seconds, 0)::float8 AS wait_seconds
FROM run_nodes rn
JOIN nodes n ON n.id = rn.node_id
-- One pass over the run's messages (a filter on run_id reaches it through the join).
LEFT JOIN (
    SELECT
        m.run_id,
        coalesce(m.dst_node_id, m.src_node_id) AS node_id,
        count(*) FILTER (WHERE m.reply_to IS NULL) AS instructions,
        count(*) FILTER (WHERE m.reply_to IS NOT NULL) AS replies,
        sum(b.bytes) FILTER (WHERE m.reply_to IS NULL) AS bytes_received,
        sum(b.bytes) FILTER (WHERE m.reply_to IS NOT NULL) AS bytes_sent,
        sum(extract(epoch FROM rep.created_at - m.claimed_at))
            FILTER (WHERE m.reply_to IS NULL AND m.state = 'done') AS clientapp_seconds,
        sum(extract(epoch FROM m.claimed_at - m.created_at))
            FILTER (WHERE m.reply_to IS NULL) AS wait_seconds
    FROM messages m
    LEFT JOIN messages rep ON rep.reply_to = m.id
    CROSS JOIN LATERAL (
        SELECT sum(a.nbytes) AS bytes
        FROM message_arrays ma JOIN arrays a ON a.id = ma.array_id
        WHERE ma.message_id = m.id
    ) b
    GROUP BY m.run_id, coalesce(m.dst_node_id, m.src_node_id)
) mm ON mm.run_id = rn.run_id AND mm.node_id = rn.node_id;

GRANT SELECT ON node_accounting TO flpg_user, flpg_auditor;
