-- Crash recovery of the round-transient payloads (UNLOGGED array_chunks_transient).
-- A crash (or a failover to a standby) empties every unlogged table: the row of
-- transient_marker goes with them, which is how the link notices.

-- name: transient_marker_present
SELECT EXISTS (SELECT 1 FROM transient_marker) AS present;

-- name: transient_marker_recover
-- Link: one statement. The link whose insert puts the marker back marks every
-- round-transient array whose chunks are gone as lost (and collected), and returns the
-- runs that had such arrays; a concurrent link waits on the marker's key, inserts
-- nothing and marks nothing. Arrays written since the restart have all their chunks
-- (an array and its chunks commit together) and are left alone.
WITH marker AS (
    INSERT INTO transient_marker (id) VALUES (1) ON CONFLICT DO NOTHING RETURNING id
), lost AS (
    UPDATE arrays a SET lost_at = now(), collected_at = now()
    WHERE EXISTS (SELECT 1 FROM marker)
      AND NOT a.durable AND a.collected_at IS NULL AND a.n_chunks > 0
      AND NOT EXISTS (SELECT 1 FROM array_chunks_transient t WHERE t.array_id = a.id)
    RETURNING a.run_id
)
SELECT EXISTS (SELECT 1 FROM marker) AS recovered,
       (SELECT count(*) FROM lost) AS arrays,
       ARRAY(SELECT DISTINCT run_id FROM lost ORDER BY run_id) AS run_ids;
