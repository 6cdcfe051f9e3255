-- Trust, version 6 (migration 0015): the same rows as before for every role, from
-- policies whose identity conditions never choose how a table is read.
--
-- A policy's `run_id = (SELECT flpg_my_run_id())` compares a column with an InitPlan,
-- which the planner may use as an index key. On messages and arrays, whose run_id
-- indexes list every row a run ever had, it did: the ClientApp's reply write
-- (messages_insert_replies) found its claimed instruction by scanning the run's
-- messages (ix_messages_run_id) instead of the claimed ones (ix_messages_lease), and the
-- ServerApp read the arrays of a few messages, or one checkpoint, by scanning the run's
-- arrays (ix_arrays_run_id). The estimate for one run's rows is a guess (one row, in a
-- young table), so the cost grew with the run's length. Here those comparisons read
-- `run_id + 0`: a filter on rows the statement's own conditions found, never an index
-- condition. Rows are the same (run_id is never NULL on either table).
--
-- The chunk tables' policy asks whether the caller may read the chunk's array with an
-- EXISTS the planner could turn into a hash of every array the caller may read (the
-- whole run, for a ServerApp), built for each read. `OFFSET 0` keeps it a lookup by
-- primary key for the chunks read (PostgreSQL does not rewrite an EXISTS with OFFSET).
--
-- The two identity lookups no longer carry `SET search_path`: a function with a SET
-- clause saves and restores the setting at every call, about a quarter of a lookup's
-- cost (11 us against 8.5, server side). They run as the caller, so the caller's
-- search_path applies: every name in their bodies is schema-qualified (a table,
-- function or operator the caller could create, e.g. a temporary table named
-- principal_nodes, is never read; a test tries it).
-- Never edit a released version: a change is a new file and a migration naming it.

CREATE OR REPLACE FUNCTION flpg_my_node_ids() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT coalesce(pg_catalog.array_agg(node_id ORDER BY node_id), '{}') INTO ids
    FROM public.principal_nodes
    WHERE role_name OPERATOR(pg_catalog.=) current_user;
    RETURN ids;
END
$$;

CREATE OR REPLACE FUNCTION flpg_my_run_id() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    run bigint;
BEGIN
    SELECT run_id INTO run FROM public.principals
    WHERE role_name OPERATOR(pg_catalog.=) current_user;
    RETURN run;
END
$$;

ALTER POLICY clientapp_messages ON messages
    USING (run_id + 0 = (SELECT flpg_my_run_id())
           AND (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                OR src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])));
ALTER POLICY clientapp_claims ON messages
    USING (run_id + 0 = (SELECT flpg_my_run_id())
           AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
ALTER POLICY serverapp_run ON messages USING (run_id + 0 = (SELECT flpg_my_run_id()));
ALTER POLICY serverapp_run ON arrays USING (run_id + 0 = (SELECT flpg_my_run_id()));

ALTER POLICY readable_array ON array_chunks
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks.array_id OFFSET 0)
           OR flpg_array_writer(array_id) = current_user);
ALTER POLICY readable_array ON array_chunks_transient
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks_transient.array_id
                   OFFSET 0)
           OR flpg_array_writer(array_id) = current_user);
