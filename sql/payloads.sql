-- Array payloads: written once, chunked, referenced by messages.

-- name: arrays_insert
-- `durable`: where its chunks go (array_chunks, or array_chunks_transient: no WAL).
INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest, digest_alg,
                    durable, codec, base_array_id)
VALUES (%(run_id)s, %(dtype)s, %(shape)s, %(nbytes)s, %(chunk_size)s, %(n_chunks)s,
        %(digest)s, %(digest_alg)s, %(durable)s, %(codec)s, %(base_array_id)s)
RETURNING id;

-- name: array_chunks_insert
INSERT INTO array_chunks (array_id, seq, data) VALUES (%(array_id)s, %(seq)s, %(data)b);

-- name: array_chunks_transient_insert
INSERT INTO array_chunks_transient (array_id, seq, data)
VALUES (%(array_id)s, %(seq)s, %(data)b);

-- name: arrays_get_digest
-- An array's digest and its algorithm (a top-k delta's base, checked as it is read).
SELECT digest, digest_alg FROM arrays WHERE id = %(array_id)s;

-- name: message_arrays_list
-- The arrays each message carries, in record order. Each array is looked up by
-- primary key from its link (a LATERAL with OFFSET 0 is never flattened into a join):
-- under a ServerApp's policy, `run_id + 0`, a generic plan estimated one array for the
-- run and scanned the run's arrays, each against every link (0.8 ms on a young table).
SELECT ma.message_id, ma.record_name, ma.position, ma.array_name, a.*
FROM message_arrays ma
CROSS JOIN LATERAL (
    SELECT a.id AS array_id, a.dtype, a.shape, a.nbytes, a.n_chunks, a.chunk_size, a.digest,
           a.digest_alg, a.codec, a.base_array_id, a.durable,
           a.collected_at IS NOT NULL AS collected, a.lost_at IS NOT NULL AS lost
    FROM arrays a WHERE a.id = ma.array_id OFFSET 0
) AS a
WHERE ma.message_id = ANY(%(message_ids)s)
ORDER BY ma.message_id, ma.record_name, ma.position;

-- name: array_chunks_stream
-- Chunks of several arrays, streamed in order (binary) into preallocated arrays. An
-- array's chunks are in one of the two tables (its durability class), so the union
-- holds each chunk once.
SELECT array_id, seq, data
FROM (
    SELECT array_id, seq, data FROM array_chunks WHERE array_id = ANY(%(array_ids)s)
    UNION ALL
    SELECT array_id, seq, data FROM array_chunks_transient
    WHERE array_id = ANY(%(array_ids)s)
) c
ORDER BY array_id, seq;

-- name: array_chunks_list_from
-- The next `limit` chunks of one array from `first` on (a resumable streamed read).
SELECT seq, data
FROM (
    (SELECT seq, data FROM array_chunks
     WHERE array_id = %(array_id)s AND seq >= %(first)s ORDER BY seq LIMIT %(limit)s)
    UNION ALL
    (SELECT seq, data FROM array_chunks_transient
     WHERE array_id = %(array_id)s AND seq >= %(first)s ORDER BY seq LIMIT %(limit)s)
) c
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
      -- the base of a top-k reply that is still readable
      AND NOT EXISTS (
          SELECT 1 FROM arrays r WHERE r.base_array_id = a.id AND r.collected_at IS NULL
      )
    ORDER BY a.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), chunks AS (
    DELETE FROM array_chunks c USING dead WHERE c.array_id = dead.id
), transient AS (
    DELETE FROM array_chunks_transient c USING dead WHERE c.array_id = dead.id
), marked AS (
    UPDATE arrays a SET collected_at = now() FROM dead WHERE a.id = dead.id
)
SELECT count(*) AS arrays, coalesce(sum(nbytes), 0)::bigint AS bytes FROM dead;

-- name: arrays_insert_small
-- Node replies: many small arrays (at most one chunk each) and their chunks in one
-- statement; returns their ids in input order (bigger arrays go through
-- payloads.write, chunk by chunk). Shapes come as text ('{2,3}'); digests and data
-- as binary parameters (a text bytea[] would be hex-encoded: 7x slower per MB here).
-- `durable` chooses the chunks' table, as in arrays_insert.
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('arrays', 'id')) AS id, u.*
    FROM unnest(%(dtypes)s::text[], %(shapes)s::text[], %(nbytes)s::bigint[],
                %(digests)b::bytea[], %(datas)b::bytea[], %(codecs)s::text[],
                %(bases)s::bigint[])
        WITH ORDINALITY AS u(dtype, shape, nbytes, digest, data, codec, base_array_id, ord)
), stored AS (
    INSERT INTO arrays (id, run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest,
                        digest_alg, durable, codec, base_array_id)
    SELECT id, %(run_id)s, dtype, shape::bigint[], nbytes, %(chunk_size)s,
           CASE WHEN nbytes > 0 THEN 1 ELSE 0 END, digest, %(digest_alg)s, %(durable)s,
           codec, base_array_id
    FROM input
    RETURNING id
), durable_chunks AS (
    INSERT INTO array_chunks (array_id, seq, data)
    SELECT id, 0, data FROM input WHERE nbytes > 0 AND %(durable)s
    RETURNING array_id
), transient_chunks AS (
    INSERT INTO array_chunks_transient (array_id, seq, data)
    SELECT id, 0, data FROM input WHERE nbytes > 0 AND NOT %(durable)s
    RETURNING array_id
)
SELECT i.id, (SELECT count(*) FROM stored) AS arrays,
       (SELECT count(*) FROM durable_chunks) + (SELECT count(*) FROM transient_chunks)
           AS chunks
FROM input i
ORDER BY i.ord;

-- name: arrays_collect_retired
-- `flpg gc` (admin): delete the chunks of up to `limit` arrays (NULL: all) of retired
-- runs, marking them collected; the `arrays` rows (dtype, shape, digest) and every
-- other row stay. Retired: ended (finished, failed, stopped) `older_than` seconds ago
-- or more, and not among the `keep_last` most recently ended runs. A run being
-- changed right now (e.g. resumed) is skipped (SKIP LOCKED), and its row is held
-- (FOR SHARE) so it cannot be resumed meanwhile. With `keep_model`, an array in a
-- checkpoint (a run's final model) is kept; whatever the flag, an array a run that
-- is not retired carries or checkpoints is kept. With `dry_run` nothing is deleted
-- and the same numbers are returned. Returns what was (or would be) freed, the runs
-- it touched, and how many runs were left alone and why; nothing is done unless the
-- role is admin (a member of the tables' owner), which `admin` says.
WITH admin AS MATERIALIZED (
    SELECT pg_has_role(current_user, c.relowner, 'MEMBER') AS ok
    FROM pg_class c WHERE c.oid = 'arrays'::regclass
), ended AS MATERIALIZED (
    SELECT id, finished_at,
           finished_at > now() - make_interval(secs => %(older_than)s) AS recent,
           row_number() OVER (ORDER BY finished_at DESC, id DESC) <= %(keep_last)s AS kept
    FROM runs
    WHERE status IN ('finished', 'failed', 'stopped')
), retired AS MATERIALIZED (
    SELECT r.id
    FROM runs r
    WHERE r.id IN (SELECT id FROM ended WHERE NOT recent AND NOT kept)
      AND r.status IN ('finished', 'failed', 'stopped')
      AND (SELECT ok FROM admin)
    FOR SHARE OF r SKIP LOCKED
), dead AS MATERIALIZED (
    SELECT a.id, a.run_id
    FROM arrays a
    WHERE a.run_id IN (SELECT id FROM retired)
      AND a.collected_at IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM checkpoint_arrays ca
          WHERE ca.array_id = a.id
            AND (%(keep_model)s OR ca.run_id NOT IN (SELECT id FROM retired))
      )
      AND NOT EXISTS (
          SELECT 1
          FROM message_arrays ma
          JOIN messages m ON m.id = ma.message_id
          WHERE ma.array_id = a.id AND m.run_id NOT IN (SELECT id FROM retired)
      )
    ORDER BY a.id
    LIMIT %(limit)s
    FOR UPDATE OF a SKIP LOCKED
), freed AS MATERIALIZED (
    -- The same snapshot as the deletion below: the rows it deletes.
    SELECT c.array_id, octet_length(c.data) AS nbytes
    FROM array_chunks c JOIN dead ON dead.id = c.array_id
    UNION ALL
    SELECT c.array_id, octet_length(c.data) AS nbytes
    FROM array_chunks_transient c JOIN dead ON dead.id = c.array_id
), deleted AS (
    DELETE FROM array_chunks c USING dead
    WHERE c.array_id = dead.id AND NOT %(dry_run)s
), deleted_transient AS (
    DELETE FROM array_chunks_transient c USING dead
    WHERE c.array_id = dead.id AND NOT %(dry_run)s
), marked AS (
    UPDATE arrays a SET collected_at = now()
    FROM dead
    WHERE a.id = dead.id AND NOT %(dry_run)s
)
SELECT (SELECT ok FROM admin) AS admin,
       (SELECT count(*) FROM dead) AS arrays,
       (SELECT count(*) FROM freed) AS chunks,
       (SELECT coalesce(sum(nbytes), 0) FROM freed)::bigint AS bytes,
       ARRAY(SELECT DISTINCT run_id FROM dead ORDER BY run_id) AS run_ids,
       (SELECT count(*) FROM runs WHERE status NOT IN ('finished', 'failed', 'stopped'))
           AS active,
       (SELECT count(*) FROM ended WHERE recent) AS recent,
       (SELECT count(*) FROM ended WHERE kept AND NOT recent) AS kept;

-- name: array_chunks_byte_ranges
-- Bytes [start, stop) of several arrays in one statement: the same slice of many
-- replies' arrays for the chunk-wise robust aggregators. Each chunk overlapping a
-- range yields only its overlapping part (`at` is that part's offset in the array),
-- so a reader holds the slice, never whole chunks; data is stored EXTERNAL
-- (uncompressed), so substring reads only the TOAST pieces it needs.
SELECT w.array_id, c.seq, c.seq::bigint * a.chunk_size + s.lo AS at,
       substring(c.data FROM s.lo + 1 FOR s.hi - s.lo) AS data
FROM unnest(%(array_ids)s::bigint[], %(starts)s::bigint[], %(stops)s::bigint[])
    AS w(array_id, start, stop)
JOIN arrays a ON a.id = w.array_id
JOIN (SELECT array_id, seq, data FROM array_chunks
      UNION ALL
      SELECT array_id, seq, data FROM array_chunks_transient) c
    ON c.array_id = w.array_id
   AND c.seq >= w.start / a.chunk_size
   AND c.seq <= (w.stop - 1) / a.chunk_size
CROSS JOIN LATERAL (
    SELECT greatest(w.start - c.seq::bigint * a.chunk_size, 0)::int AS lo,
           least(w.stop - c.seq::bigint * a.chunk_size, a.chunk_size)::int AS hi
) s
WHERE w.stop > w.start
ORDER BY w.array_id, c.seq;
