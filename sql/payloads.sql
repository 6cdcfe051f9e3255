-- Array payloads: written once, chunked, referenced by messages.

-- name: arrays_insert
INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)
VALUES (%(run_id)s, %(dtype)s, %(shape)s, %(nbytes)s, %(chunk_size)s, %(n_chunks)s,
        %(digest)s)
RETURNING id;

-- name: array_chunks_insert
INSERT INTO array_chunks (array_id, seq, data) VALUES (%(array_id)s, %(seq)s, %(data)b);

-- name: message_arrays_list
-- The arrays each message carries, in record order.
SELECT ma.message_id, ma.record_name, ma.position, ma.array_name,
       a.id AS array_id, a.dtype, a.shape, a.nbytes, a.n_chunks, a.digest,
       a.collected_at IS NOT NULL AS collected
FROM message_arrays ma
JOIN arrays a ON a.id = ma.array_id
WHERE ma.message_id = ANY(%(message_ids)s)
ORDER BY ma.message_id, ma.record_name, ma.position;

-- name: array_chunks_stream
-- Chunks of several arrays, streamed in order (binary) into preallocated arrays.
SELECT array_id, seq, data
FROM array_chunks
WHERE array_id = ANY(%(array_ids)s)
ORDER BY array_id, seq;

-- name: array_chunks_list_from
-- The next `limit` chunks of one array from `first` on (a resumable streamed read).
SELECT seq, data
FROM array_chunks
WHERE array_id = %(array_id)s AND seq >= %(first)s
ORDER BY seq
LIMIT %(limit)s;

-- name: arrays_collect
-- Link sweep: delete the chunks of arrays that nothing live needs, at most `limit`
-- at a time. Needed: by a checkpoint, or by a message that is queued or claimed
-- or finished less than `grace` seconds ago (a reader may be between taking it and
-- reading its arrays). Arrays younger than `grace` are kept too: a send writes its
-- payloads before the messages that reference them.
WITH dead AS (
    SELECT a.id, a.nbytes
    FROM arrays a
    WHERE a.collected_at IS NULL
      AND a.created_at < now() - make_interval(secs => %(grace)s)
      AND NOT EXISTS (SELECT 1 FROM checkpoint_arrays ca WHERE ca.array_id = a.id)
      AND NOT EXISTS (
          SELECT 1
          FROM message_arrays ma
          JOIN messages m ON m.id = ma.message_id
          WHERE ma.array_id = a.id
            AND (m.state IN ('queued', 'claimed')
                 OR m.finished_at > now() - make_interval(secs => %(grace)s))
      )
    ORDER BY a.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), chunks AS (
    DELETE FROM array_chunks c USING dead WHERE c.array_id = dead.id
), marked AS (
    UPDATE arrays a SET collected_at = now() FROM dead WHERE a.id = dead.id
)
SELECT count(*) AS arrays, coalesce(sum(nbytes), 0)::bigint AS bytes FROM dead;

-- name: arrays_insert_small
-- Node replies: many small arrays (at most one chunk each) and their chunks in one
-- statement; returns their ids in input order (bigger arrays go through
-- payloads.write, chunk by chunk). Shapes come as text ('{2,3}'); digests and data
-- as binary parameters (a text bytea[] would be hex-encoded: 7x slower per MB here).
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('arrays', 'id')) AS id, u.*
    FROM unnest(%(dtypes)s::text[], %(shapes)s::text[], %(nbytes)s::bigint[],
                %(digests)b::bytea[], %(datas)b::bytea[])
        WITH ORDINALITY AS u(dtype, shape, nbytes, digest, data, ord)
), stored AS (
    INSERT INTO arrays (id, run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)
    SELECT id, %(run_id)s, dtype, shape::bigint[], nbytes, %(chunk_size)s,
           CASE WHEN nbytes > 0 THEN 1 ELSE 0 END, digest
    FROM input
    RETURNING id
), chunks AS (
    INSERT INTO array_chunks (array_id, seq, data)
    SELECT id, 0, data FROM input WHERE nbytes > 0
    RETURNING array_id
)
SELECT i.id, (SELECT count(*) FROM stored) AS arrays, (SELECT count(*) FROM chunks) AS chunks
FROM input i
ORDER BY i.ord;
