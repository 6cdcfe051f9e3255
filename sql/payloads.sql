-- Array payloads: written once, chunked, referenced by messages.

-- name: array_insert
INSERT INTO arrays (run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)
VALUES (%(run_id)s, %(dtype)s, %(shape)s, %(nbytes)s, %(chunk_size)s, %(n_chunks)s,
        %(digest)s)
RETURNING id;

-- name: array_chunk_insert
INSERT INTO array_chunks (array_id, seq, data) VALUES (%(array_id)s, %(seq)s, %(data)b);

-- name: message_array_refs
-- The arrays each message carries, in record order.
SELECT ma.message_id, ma.record_name, ma.position, ma.array_name,
       a.id AS array_id, a.dtype, a.shape, a.nbytes, a.n_chunks, a.digest
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
