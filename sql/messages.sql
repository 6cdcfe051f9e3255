-- Messages: instructions (ServerApp -> node) and replies (node -> ServerApp).

-- name: messages_insert_batch
-- Many instructions, their array links and the NOTIFY of each destination node in
-- one statement (so one transaction); returns `(ord, id, created_at)` of each row it
-- inserted, in input order. A destination outside the run's selection fails it all
-- (foreign key). An instruction whose `send_key` the run already has is skipped (an
-- earlier try of the same send committed it; messages_list_sent finds it), and if that
-- try is still in flight, this statement waits for its outcome first.
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id, i.*
    FROM jsonb_to_recordset(%(instructions)s::jsonb)
        AS i(ord int, dst_node_id bigint, group_id text, message_type text, ttl float8,
             metrics jsonb, configs jsonb, send_key text)
), inserted AS (
    INSERT INTO messages (id, run_id, dst_node_id, group_id, message_type, ttl_seconds,
                          deadline, metrics, configs, send_key)
    SELECT id, %(run_id)s, dst_node_id, group_id, message_type, ttl,
           now() + make_interval(secs => ttl), metrics, configs, send_key
    FROM input
    ON CONFLICT (run_id, send_key) WHERE send_key IS NOT NULL DO NOTHING
    RETURNING id, dst_node_id, created_at
), linked AS (
    INSERT INTO message_arrays (message_id, record_name, position, array_name, array_id)
    SELECT i.id, l.record_name, l.position, l.array_name, l.array_id
    FROM input i
    JOIN inserted n ON n.id = i.id
    JOIN jsonb_to_recordset(%(links)s::jsonb)
        AS l(ord int, record_name text, position int, array_name text, array_id bigint)
        ON l.ord = i.ord
    RETURNING 1
), woken AS (
    SELECT pg_notify('flpg_node_' || dst_node_id, %(run_id)s::text)
    FROM (SELECT DISTINCT dst_node_id FROM inserted) AS d
)
SELECT i.ord, i.id, extract(epoch FROM n.created_at)::float8 AS created_at,
       (SELECT count(*) FROM linked) AS linked, (SELECT count(*) FROM woken) AS notified
FROM input i
JOIN inserted n ON n.id = i.id
ORDER BY i.ord;

-- name: messages_list_sent
-- The instructions of a run with the given send keys (what an earlier try of a send
-- committed), via ix_messages_send_key.
SELECT send_key, id, extract(epoch FROM created_at)::float8 AS created_at
FROM messages
WHERE run_id = %(run_id)s AND send_key = ANY(%(keys)s::text[]);

-- name: messages_claim
-- Claims up to `limit` queued instructions for the given nodes with a lease, in one
-- statement. Fair across runs: runs take turns (each run's oldest message first,
-- then its second, ...), and within a turn the run these nodes were served least
-- recently goes first (run_nodes.last_claimed_at), so a run with a deep backlog
-- cannot starve another run on the same node, whatever the batch size.
-- `cand` reads only queued instructions (ix_messages_claim), never a run's history.
-- The last-served lookup is skipped when only one run has work (a one-time filter).
-- Rows are locked in turn order, SKIP LOCKED, until `limit` are held, so concurrent
-- claimers share a backlog without waiting on each other.
WITH cand AS MATERIALIZED (
    SELECT id, run_id, dst_node_id,
           row_number() OVER (PARTITION BY run_id ORDER BY id) AS turn
    FROM messages
    WHERE dst_node_id = ANY(%(node_ids)s) AND state = 'queued' AND reply_to IS NULL
      AND deadline > now()
), cand_runs AS MATERIALIZED (
    SELECT DISTINCT run_id FROM cand
), served_runs AS (
    SELECT rn.run_id, max(rn.last_claimed_at) AS last_claimed_at
    FROM run_nodes rn
    WHERE rn.run_id IN (SELECT run_id FROM cand_runs) AND rn.node_id = ANY(%(node_ids)s)
      AND (SELECT count(*) FROM cand_runs) > 1
    GROUP BY rn.run_id
), picked AS (
    SELECT l.id, o.run_id, o.dst_node_id
    FROM (
        SELECT c.id, c.run_id, c.dst_node_id, c.turn, s.last_claimed_at
        FROM cand c LEFT JOIN served_runs s ON s.run_id = c.run_id
        ORDER BY c.turn, s.last_claimed_at NULLS FIRST, c.id
    ) AS o
    CROSS JOIN LATERAL (
        SELECT m.id FROM messages m
        WHERE m.id = o.id AND m.state = 'queued'
        FOR UPDATE SKIP LOCKED
    ) AS l
    ORDER BY o.turn, o.last_claimed_at NULLS FIRST, o.id
    LIMIT %(limit)s
), served AS (
    -- SKIP LOCKED: a row another claimer is updating gets a fresh time from it anyway,
    -- and claimers never wait on each other here (nor deadlock).
    UPDATE run_nodes SET last_claimed_at = now()
    WHERE (run_id, node_id) IN (
        SELECT rn.run_id, rn.node_id FROM run_nodes rn
        WHERE (rn.run_id, rn.node_id) IN (SELECT run_id, dst_node_id FROM picked)
        FOR NO KEY UPDATE SKIP LOCKED
    )
)
UPDATE messages m
SET state = 'claimed',
    claimed_by = %(worker)s,
    claimed_at = now(),
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = m.attempts + 1
FROM picked p
WHERE m.id = p.id
RETURNING m.id, m.run_id, m.dst_node_id, m.group_id, m.message_type, m.ttl_seconds,
          extract(epoch FROM m.created_at)::float8 AS created_at, m.metrics, m.configs,
          m.attempts;

-- name: messages_extend_lease
UPDATE messages SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(%(ids)s) AND state = 'claimed' AND claimed_by = %(worker)s
RETURNING id;

-- name: messages_insert_replies
-- Many replies in one statement (so in one transaction): completes each instruction
-- `replies[].reply_to` that this worker still holds and inserts its reply and the
-- reply's array links; an instruction whose claim was lost (lease ran out, expired,
-- cancelled) is left alone and gets no reply from here. Unique reply_to keeps it to
-- one reply each. Each run with a new reply is notified once. Returns the replies.
WITH r AS (
    SELECT *
    FROM jsonb_to_recordset(%(replies)s::jsonb)
        AS r(reply_to bigint, metrics jsonb, configs jsonb, error_code int, error_reason text)
), done AS (
    UPDATE messages m SET state = 'done', finished_at = now(), lease_until = NULL
    FROM r
    WHERE m.id = r.reply_to AND m.state = 'claimed' AND m.claimed_by = %(worker)s
      AND m.reply_to IS NULL
    RETURNING m.id, m.run_id, m.dst_node_id, m.group_id, m.message_type, m.ttl_seconds,
              m.deadline, r.metrics, r.configs, r.error_code, r.error_reason
), inserted AS (
    INSERT INTO messages (run_id, src_node_id, reply_to, group_id, message_type, ttl_seconds,
                          deadline, metrics, configs, error_code, error_reason)
    SELECT run_id, dst_node_id, id, group_id, message_type, ttl_seconds, deadline,
           metrics, configs, error_code, error_reason
    FROM done
    ON CONFLICT (reply_to) DO NOTHING
    RETURNING id, reply_to, run_id
), linked AS (
    INSERT INTO message_arrays (message_id, record_name, position, array_name, array_id)
    SELECT i.id, l.record_name, l.position, l.array_name, l.array_id
    FROM inserted i
    JOIN jsonb_to_recordset(%(links)s::jsonb)
        AS l(reply_to bigint, record_name text, position int, array_name text, array_id bigint)
        ON l.reply_to = i.reply_to
    RETURNING 1
), woken AS (
    SELECT pg_notify('flpg_run_' || run_id, '')
    FROM (SELECT DISTINCT run_id FROM inserted) AS d
)
SELECT i.id, i.reply_to, i.run_id,
       (SELECT count(*) FROM linked) AS linked, (SELECT count(*) FROM woken) AS notified
FROM inserted i;

-- name: messages_release
-- Graceful shutdown: hand claimed instructions back to the queue.
UPDATE messages SET state = 'queued', claimed_by = NULL, lease_until = NULL
WHERE claimed_by = %(worker)s AND state = 'claimed'
RETURNING id, run_id, dst_node_id;

-- name: messages_pull_replies
-- The ServerApp of a run takes the replies that arrived for the given instructions of
-- that run (ids of another run's instructions find nothing); with `again`, also those
-- it took before (a retry after a lost connection must not lose a reply whose taking
-- committed unseen).
UPDATE messages SET state = 'done', finished_at = coalesce(finished_at, now())
WHERE run_id = %(run_id)s AND reply_to = ANY(%(ids)s)
  AND (state = 'queued' OR (%(again)s AND state = 'done'))
RETURNING id, run_id, src_node_id, reply_to, group_id, message_type, ttl_seconds,
          extract(epoch FROM created_at)::float8 AS created_at, metrics, configs,
          error_code, error_reason;

-- name: messages_requeue_lapsed
-- Link sweep: instructions whose lease ran out become claimable again.
WITH lapsed AS (
    UPDATE messages SET state = 'queued', claimed_by = NULL, lease_until = NULL
    WHERE state = 'claimed' AND lease_until < now() AND deadline > now()
    RETURNING run_id, dst_node_id
), woken AS (
    SELECT pg_notify('flpg_node_' || dst_node_id, run_id::text)
    FROM (SELECT DISTINCT run_id, dst_node_id FROM lapsed) AS d
)
SELECT (SELECT count(*) FROM lapsed) AS requeued, (SELECT count(*) FROM woken) AS notified;

-- name: messages_expire
-- Link sweep: instructions past their TTL expire and their run gets an error reply.
WITH expired AS (
    UPDATE messages SET state = 'expired', finished_at = now(), lease_until = NULL
    WHERE reply_to IS NULL AND state IN ('queued', 'claimed') AND deadline <= now()
    RETURNING id, run_id, dst_node_id, group_id, message_type, ttl_seconds, deadline
), replies AS (
    INSERT INTO messages (run_id, src_node_id, reply_to, group_id, message_type,
                          ttl_seconds, deadline, error_code, error_reason)
    SELECT run_id, dst_node_id, id, group_id, message_type, ttl_seconds, deadline,
           %(error_code)s,
           format('message %%s expired: node %%s did not reply within its TTL of %%s s',
                  id, dst_node_id, ttl_seconds)
    FROM expired
    ON CONFLICT (reply_to) DO NOTHING
    RETURNING run_id
), woken AS (
    SELECT pg_notify('flpg_run_' || run_id, '')
    FROM (SELECT DISTINCT run_id FROM replies) AS d
)
SELECT (SELECT count(*) FROM expired) AS expired, (SELECT count(*) FROM woken) AS notified;

-- name: messages_fail_offline
-- Link sweep, in the transaction that marked `node_ids` offline: their undelivered
-- instructions (queued, or claimed by a worker of the now-silent node) expire at
-- once, each with an error reply naming the node, instead of waiting for their TTL.
-- Re-checks under a share lock that each node is still offline (a worker that beats
-- again first keeps its messages); unique reply_to keeps it to one reply each.
WITH gone AS (
    SELECT id, name, last_seen_at
    FROM nodes
    WHERE id = ANY(%(node_ids)s) AND status = 'offline'
    FOR SHARE
), expired AS (
    UPDATE messages m SET state = 'expired', finished_at = now(), lease_until = NULL
    FROM gone g
    WHERE m.dst_node_id = g.id AND m.reply_to IS NULL AND m.state IN ('queued', 'claimed')
    RETURNING m.id, m.run_id, m.dst_node_id, m.group_id, m.message_type, m.ttl_seconds,
              m.deadline, g.name, g.last_seen_at
), replies AS (
    INSERT INTO messages (run_id, src_node_id, reply_to, group_id, message_type,
                          ttl_seconds, deadline, error_code, error_reason)
    SELECT run_id, dst_node_id, id, group_id, message_type, ttl_seconds, deadline,
           %(error_code)s,
           format('message %%s not delivered: node %%s (%%s) went offline (last heartbeat %%s s ago)',
                  id, dst_node_id, name,
                  round(extract(epoch FROM now() - last_seen_at)::numeric, 1))
    FROM expired
    ON CONFLICT (reply_to) DO NOTHING
    RETURNING run_id
), woken AS (
    SELECT pg_notify('flpg_run_' || run_id, '')
    FROM (SELECT DISTINCT run_id FROM replies) AS d
)
SELECT (SELECT count(*) FROM expired) AS expired, (SELECT count(*) FROM woken) AS notified;

-- name: messages_count_for_run
SELECT state, (reply_to IS NOT NULL) AS is_reply, count(*) AS n
FROM messages
WHERE run_id = %(run_id)s
GROUP BY state, is_reply;

-- name: messages_reject_replies
-- The ServerApp records why its strategy left replies of its run out of a round.
UPDATE messages m SET rejected_reason = r.reason
FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS r(id, reason)
WHERE m.id = r.id AND m.run_id = %(run_id)s AND m.reply_to IS NOT NULL;

-- name: messages_cancel_for_run
-- Undelivered instructions of an ended run are cancelled (kept, not deleted). Run
-- messages_cancel_replies_for_run after it, as a separate statement of the same transaction.
UPDATE messages SET state = 'cancelled', finished_at = now(), lease_until = NULL
WHERE run_id = %(run_id)s AND reply_to IS NULL AND state IN ('queued', 'claimed');

-- name: messages_cancel_replies_for_run
-- Replies of an ended run that its ServerApp never took are cancelled too. Every
-- reply is inserted in the transaction that ends its instruction (node, expiry and
-- offline replies alike), and messages_cancel_for_run waited for each such transaction
-- still holding one of the run's queued or claimed instructions; so this statement's
-- snapshot sees every reply the run will ever get, and no reply is left queued.
UPDATE messages SET state = 'cancelled', finished_at = now()
WHERE run_id = %(run_id)s AND reply_to IS NOT NULL AND state = 'queued';

-- name: messages_delete_for_run
-- Retention, step 1 of 2 (same transaction as runs_delete): an ended run's messages;
-- their array links and replies cascade. Deleting the run alone fails: its arrays
-- cascade fires before the message_arrays cascade and fk_message_arrays_array_id
-- (NO ACTION) still sees the links.
DELETE FROM messages m
USING runs r
WHERE m.run_id = %(run_id)s AND r.id = m.run_id
  AND r.status IN ('finished', 'failed', 'stopped');
