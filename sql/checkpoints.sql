-- Checkpoints: a run's arrays and metrics after its last completed round.

-- name: checkpoints_upsert
-- Only the run's current attempt may save: a stale ServerApp (its run was restarted
-- meanwhile) inserts nothing. Nor does any ServerApp after a crash emptied the
-- round-transient payloads (no transient_marker row) until the link has restarted the
-- runs that lost some: the round may have been computed from lost replies.
INSERT INTO checkpoints (run_id, round, attempt, metrics)
SELECT id, %(round)s, attempt, %(metrics)s
FROM runs
WHERE id = %(run_id)s AND attempt = %(attempt)s AND status = 'running'
  AND EXISTS (SELECT 1 FROM transient_marker)
ON CONFLICT (run_id) DO UPDATE
    SET round = EXCLUDED.round, attempt = EXCLUDED.attempt, metrics = EXCLUDED.metrics,
        saved_at = now()
RETURNING run_id;

-- name: checkpoint_arrays_replace_old
-- The previous checkpoint's array links go; their payloads too unless a message
-- still carries them or the new checkpoint keeps them (`keep`).
WITH old AS (
    DELETE FROM checkpoint_arrays WHERE run_id = %(run_id)s RETURNING array_id
)
DELETE FROM arrays a
USING old
WHERE a.id = old.array_id
  AND a.id <> ALL(%(keep)s)
  AND NOT EXISTS (SELECT 1 FROM message_arrays ma WHERE ma.array_id = a.id);

-- name: checkpoint_arrays_insert
INSERT INTO checkpoint_arrays (run_id, position, array_name, array_id)
VALUES (%(run_id)s, %(position)s, %(array_name)s, %(array_id)s);

-- name: checkpoint_arrays_make_durable
-- The checkpoint's arrays that are still round-transient (a broadcast or a reply it
-- kept) move into array_chunks, so a crash cannot take them (trust.v4).
SELECT flpg_checkpoint_durable(%(run_id)s) AS moved;

-- name: checkpoints_get
SELECT run_id, round, attempt, metrics, extract(epoch FROM saved_at)::float8 AS saved_at
FROM checkpoints
WHERE run_id = %(run_id)s;

-- name: checkpoint_arrays_list
-- Each array looked up by primary key from its link, as in message_arrays_list.
SELECT NULL::bigint AS message_id, 'checkpoint' AS record_name, ca.position, ca.array_name, a.*
FROM checkpoint_arrays ca
CROSS JOIN LATERAL (
    SELECT a.id AS array_id, a.dtype, a.shape, a.nbytes, a.n_chunks, a.chunk_size, a.digest,
           a.digest_alg, a.codec, a.base_array_id, a.durable,
           a.collected_at IS NOT NULL AS collected, a.lost_at IS NOT NULL AS lost
    FROM arrays a WHERE a.id = ca.array_id OFFSET 0
) AS a
WHERE ca.run_id = %(run_id)s
ORDER BY ca.position;
