-- Messages: instructions (ServerApp -> node) and replies (node -> ServerApp).

-- name: message_insert
-- One instruction; its destination must be in the run's selection (foreign key).
INSERT INTO messages (run_id, dst_node_id, group_id, message_type, ttl_seconds, deadline,
                      metrics, configs)
VALUES (%(run_id)s, %(dst_node_id)s, %(group_id)s, %(message_type)s, %(ttl)s,
        now() + make_interval(secs => %(ttl)s), %(metrics)s, %(configs)s)
RETURNING id, extract(epoch FROM created_at)::float8 AS created_at;

-- name: message_arrays_insert
INSERT INTO message_arrays (message_id, record_name, position, array_name, array_id)
VALUES (%(message_id)s, %(record_name)s, %(position)s, %(array_name)s, %(array_id)s);

-- name: notify_nodes
-- Wakes the workers of each node; the payload is the run id (ids only, tiny).
SELECT pg_notify('flpg_node_' || n, %(run_id)s::text)
FROM unnest(%(node_ids)s::bigint[]) AS n;

-- name: messages_claim
-- Claims up to `limit` queued instructions for the given nodes with a lease.
-- Fair across runs: runs take turns (each run's oldest message first, then its
-- second, ...), and within a turn the run this node served least recently goes
-- first (run_nodes.last_claimed_at), so a run with a deep backlog cannot starve
-- another run on the same node, even when workers claim one message at a time.
-- Matches ix_messages_claim (dst_node_id, run_id, id WHERE state = 'queued').
WITH picked AS (
    SELECT c.id, r.run_id, c.dst_node_id
    FROM (
        SELECT q.run_id, max(rn.last_claimed_at) AS last_claimed_at
        FROM (
            SELECT DISTINCT run_id
            FROM messages
            WHERE dst_node_id = ANY(%(node_ids)s) AND state = 'queued' AND reply_to IS NULL
        ) AS q
        JOIN run_nodes rn ON rn.run_id = q.run_id AND rn.node_id = ANY(%(node_ids)s)
        GROUP BY q.run_id
    ) AS r
    CROSS JOIN LATERAL (
        SELECT x.id, x.dst_node_id, row_number() OVER (ORDER BY x.id) AS turn
        FROM (
            SELECT id, dst_node_id FROM messages
            WHERE run_id = r.run_id AND dst_node_id = ANY(%(node_ids)s)
              AND state = 'queued' AND reply_to IS NULL AND deadline > now()
            ORDER BY id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS x
    ) AS c
    ORDER BY c.turn, r.last_claimed_at NULLS FIRST, c.id
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

-- name: message_complete
-- The instruction is done only if this worker still holds its claim.
UPDATE messages SET state = 'done', finished_at = now(), lease_until = NULL
WHERE id = %(id)s AND state = 'claimed' AND claimed_by = %(worker)s
RETURNING run_id;

-- name: reply_insert
-- A reply to an instruction; unique reply_to makes a second reply impossible.
INSERT INTO messages (run_id, src_node_id, reply_to, group_id, message_type, ttl_seconds,
                      deadline, metrics, configs, error_code, error_reason)
SELECT run_id, dst_node_id, id, group_id, message_type, ttl_seconds, deadline,
       %(metrics)s, %(configs)s, %(error_code)s, %(error_reason)s
FROM messages
WHERE id = %(reply_to)s AND reply_to IS NULL
RETURNING id, run_id;

-- name: notify_run
SELECT pg_notify('flpg_run_' || %(run_id)s, %(message_id)s::text);

-- name: messages_release
-- Graceful shutdown: hand claimed instructions back to the queue.
UPDATE messages SET state = 'queued', claimed_by = NULL, lease_until = NULL
WHERE claimed_by = %(worker)s AND state = 'claimed'
RETURNING id, run_id, dst_node_id;

-- name: replies_pull
-- The ServerApp takes the replies that arrived for the given instructions; with
-- `again`, also those it took before (a retry after a lost connection must not
-- lose a reply whose taking committed unseen).
UPDATE messages SET state = 'done', finished_at = coalesce(finished_at, now())
WHERE reply_to = ANY(%(ids)s) AND (state = 'queued' OR (%(again)s AND state = 'done'))
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

-- name: message_counts_for_run
SELECT state, (reply_to IS NOT NULL) AS is_reply, count(*) AS n
FROM messages
WHERE run_id = %(run_id)s
GROUP BY state, is_reply;

-- name: replies_reject
-- The ServerApp records why its strategy left replies of its run out of a round.
UPDATE messages m SET rejected_reason = r.reason
FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS r(id, reason)
WHERE m.id = r.id AND m.run_id = %(run_id)s AND m.reply_to IS NOT NULL;
