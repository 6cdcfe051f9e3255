-- Undoes trust.v6 (migration 0015's downgrade): the policies as trust.v2 and trust.v4
-- left them, and the identity lookups as trust.v5 did.

CREATE OR REPLACE FUNCTION flpg_my_node_ids() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, public
AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT coalesce(array_agg(node_id ORDER BY node_id), '{}') INTO ids
    FROM public.principal_nodes WHERE role_name = current_user;
    RETURN ids;
END
$$;

CREATE OR REPLACE FUNCTION flpg_my_run_id() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, public
AS $$
DECLARE
    run bigint;
BEGIN
    SELECT run_id INTO run FROM public.principals WHERE role_name = current_user;
    RETURN run;
END
$$;

ALTER POLICY clientapp_messages ON messages
    USING (run_id = (SELECT flpg_my_run_id())
           AND (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                OR src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])));
ALTER POLICY clientapp_claims ON messages
    USING (run_id = (SELECT flpg_my_run_id())
           AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
ALTER POLICY serverapp_run ON messages USING (run_id = (SELECT flpg_my_run_id()));
ALTER POLICY serverapp_run ON arrays USING (run_id = (SELECT flpg_my_run_id()));

ALTER POLICY readable_array ON array_chunks
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks.array_id)
           OR flpg_array_writer(array_id) = current_user);
ALTER POLICY readable_array ON array_chunks_transient
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks_transient.array_id)
           OR flpg_array_writer(array_id) = current_user);
