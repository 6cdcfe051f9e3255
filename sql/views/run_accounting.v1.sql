-- Audit view run_accounting, version 1 (migration 0011).
-- One row per run: messages and payload bytes exchanged with its nodes, ClientApp
-- compute and waiting time (the sums of node_accounting's), and ServerApp time.
-- Bytes are seen from the ServerApp: `bytes_sent` by its instructions, `bytes_received`
-- by the replies. `serverapp_seconds` adds up every launch of its ServerApp (one per
-- attempt), each from the launch (its run role made) to the end of that attempt: its
-- run role dropped, the next launch, or the run's end, whichever comes first; a
-- running attempt counts up to now. `queue_seconds`: submitted -> first launch (up to
-- now while it was never launched).
-- security_invoker: each role sees the rows of the runs it may read (a user its own
-- runs, the auditor all).
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

CREATE OR REPLACE VIEW run_accounting WITH (security_invoker = true) AS
SELECT
    r.id AS run_id,
    r.submitted_by,
    r.status,
    coalesce(mm.instructions, 0) AS instructions,
    coalesce(mm.replies, 0) AS replies,
    coalesce(mm.instructions, 0) + coalesce(mm.replies, 0) AS messages,
    coalesce(mm.bytes_sent, 0)::bigint AS bytes_sent,
    coalesce(mm.bytes_received, 0)::bigint AS bytes_received,
    coalesce(mm.clientapp_seconds, 0)::float8 AS clientapp_seconds,
    coalesce(mm.wait_seconds, 0)::float8 AS wait_seconds,
    coalesce(s.launches, 0) AS launches,
    coalesce(s.serverapp_seconds, 0)::float8 AS serverapp_seconds,
    extract(epoch FROM coalesce(s.first_launch, CASE WHEN r.status = 'pending' THEN now() END)
                       - r.submitted_at)::float8 AS queue_seconds
FROM runs r
-- One pass over the run's messages (a filter on run_id reaches it through the join).
LEFT JOIN (
    SELECT
        m.run_id,
        count(*) FILTER (WHERE m.reply_to IS NULL) AS instructions,
        count(*) FILTER (WHERE m.reply_to IS NOT NULL) AS replies,
        sum(b.bytes) FILTER (WHERE m.reply_to IS NULL) AS bytes_sent,
        sum(b.bytes) FILTER (WHERE m.reply_to IS NOT NULL) AS bytes_received,
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
    GROUP BY m.run_id
) mm ON mm.run_id = r.id
LEFT JOIN LATERAL (
    SELECT
        count(*) AS launches,
        min(l.created_at) AS first_launch,
        sum(greatest(extract(epoch FROM least(
            l.dropped_at,
            l.next_launch,
            CASE WHEN l.next_launch IS NULL THEN coalesce(r.finished_at, now()) END
        ) - l.created_at), 0)) AS serverapp_seconds
    FROM (
        SELECT rr.created_at, rr.dropped_at,
               lead(rr.created_at) OVER (ORDER BY rr.created_at) AS next_launch
        FROM run_roles rr
        WHERE rr.run_id = r.id AND rr.kind = 'serverapp'
    ) l
) s ON true;

GRANT SELECT ON run_accounting TO flpg_user, flpg_auditor;
