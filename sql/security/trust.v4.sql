-- Trust model v4 (migration 0013): the round-transient payload class.
-- 1. array_chunks_transient (UNLOGGED) gets exactly array_chunks' grants and policies:
--    a role reads the chunks of the arrays it may see, writes chunks only of arrays it
--    wrote, the link sees (array_id, seq) and deletes, the auditor sees (array_id, seq).
-- 2. transient_marker: every role may read whether the unlogged tables survived; only
--    the link writes it (its crash recovery, flpg/store/recovery.py).
-- 3. The new arrays columns: writers set durable, codec, digest_alg and base_array_id
--    (a top-k reply's base; a base the ServerApp cannot read rejects that reply
--    alone: the ServerApp reads it under its own policies); the link sets lost_at
--    when it recovers from a crash.
-- 4. flpg_checkpoint_durable(run): moves the chunks of a run's checkpointed arrays that
--    are still transient into array_chunks (SECURITY DEFINER: the array may be a reply a
--    node wrote). It only ever touches arrays some checkpoint references, which must
--    survive a crash anyway, so any caller can do no more than the checkpoint's owner.
-- Never edit a released version: a change is a new file and a migration naming it.

GRANT SELECT ON array_chunks_transient TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp;
GRANT INSERT ON array_chunks_transient TO flpg_node, flpg_serverapp, flpg_clientapp;
GRANT SELECT (array_id, seq) ON array_chunks_transient TO flpg_link, flpg_auditor;
GRANT DELETE ON array_chunks_transient TO flpg_link;
ALTER TABLE array_chunks_transient ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON array_chunks_transient FOR SELECT TO flpg_link, flpg_auditor
    USING (true);
CREATE POLICY link_collects ON array_chunks_transient FOR DELETE TO flpg_link USING (true);
CREATE POLICY readable_array ON array_chunks_transient FOR SELECT
    TO flpg_node, flpg_clientapp, flpg_serverapp, flpg_user
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks_transient.array_id)
           OR flpg_array_writer(array_id) = current_user);
CREATE POLICY own_array ON array_chunks_transient FOR INSERT
    TO flpg_node, flpg_clientapp, flpg_serverapp
    WITH CHECK (flpg_array_writer(array_id) = current_user);

GRANT SELECT ON transient_marker
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;
GRANT INSERT ON transient_marker TO flpg_link;
ALTER TABLE transient_marker ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON transient_marker FOR SELECT
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor
    USING (true);
CREATE POLICY link_recovers ON transient_marker FOR INSERT TO flpg_link WITH CHECK (true);

GRANT INSERT (durable, codec, digest_alg, base_array_id) ON arrays
    TO flpg_node, flpg_serverapp, flpg_clientapp;
GRANT UPDATE (lost_at) ON arrays TO flpg_link;

CREATE OR REPLACE FUNCTION flpg_checkpoint_durable(run bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    moved integer;
BEGIN
    WITH moving AS (
        SELECT a.id
        FROM public.arrays a
        JOIN public.checkpoint_arrays ca ON ca.array_id = a.id
        WHERE ca.run_id = run AND NOT a.durable
        FOR UPDATE OF a
    ), chunks AS (
        DELETE FROM public.array_chunks_transient t
        USING moving WHERE t.array_id = moving.id
        RETURNING t.array_id, t.seq, t.data
    ), copied AS (
        INSERT INTO public.array_chunks (array_id, seq, data)
        SELECT array_id, seq, data FROM chunks
    )
    UPDATE public.arrays a SET durable = true FROM moving WHERE a.id = moving.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;
REVOKE ALL ON FUNCTION flpg_checkpoint_durable(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flpg_checkpoint_durable(bigint) TO flpg_serverapp;

-- The link's crash recovery requeues a run without using up one of its own restarts.
GRANT UPDATE (max_restarts) ON runs TO flpg_link;
