-- Undoes trust.v5 (migration 0014 down): the policies and lookups as trust.v2,
-- trust.v3 and runroles.v1 left them. The views my_run and my_nodes are dropped by
-- the migration afterwards.

DROP POLICY clientapp_run ON runs;
CREATE POLICY clientapp_run ON runs FOR SELECT TO flpg_clientapp
    USING (id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON runs;
CREATE POLICY serverapp_run ON runs TO flpg_serverapp USING (id = (SELECT flpg_my_run_id()));
DROP POLICY clientapp_selected ON run_nodes;
CREATE POLICY clientapp_selected ON run_nodes TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id()) AND node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY node_selected ON run_nodes;
CREATE POLICY node_selected ON run_nodes TO flpg_node
    USING (node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY serverapp_run ON run_nodes;
CREATE POLICY serverapp_run ON run_nodes FOR SELECT TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY node_own ON nodes;
CREATE POLICY node_own ON nodes TO flpg_node USING (id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY clientapp_claims ON messages;
CREATE POLICY clientapp_claims ON messages FOR UPDATE TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id())
           AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]))
    WITH CHECK (run_id = (SELECT flpg_my_run_id()) AND reply_to IS NULL
                AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND state IN ('queued', 'claimed', 'done'));
DROP POLICY clientapp_messages ON messages;
CREATE POLICY clientapp_messages ON messages FOR SELECT TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id())
           AND (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                OR src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])));
DROP POLICY clientapp_replies ON messages;
CREATE POLICY clientapp_replies ON messages FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = (SELECT flpg_my_run_id()) AND reply_to IS NOT NULL
                AND src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));
DROP POLICY node_claims ON messages;
CREATE POLICY node_claims ON messages FOR UPDATE TO flpg_node
    USING (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]))
    WITH CHECK (reply_to IS NULL AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND state IN ('queued', 'claimed', 'done'));
DROP POLICY node_messages ON messages;
CREATE POLICY node_messages ON messages FOR SELECT TO flpg_node
    USING (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
           OR src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY node_replies ON messages;
CREATE POLICY node_replies ON messages FOR INSERT TO flpg_node
    WITH CHECK (reply_to IS NOT NULL AND src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));
DROP POLICY serverapp_run ON messages;
CREATE POLICY serverapp_run ON messages TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY carried ON message_arrays;
CREATE POLICY carried ON message_arrays FOR SELECT TO flpg_node
    USING (node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY carried_in_run ON message_arrays;
CREATE POLICY carried_in_run ON message_arrays FOR SELECT TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id())
           AND node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY serverapp_run ON message_arrays;
CREATE POLICY serverapp_run ON message_arrays FOR SELECT TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY clientapp_writes ON arrays;
CREATE POLICY clientapp_writes ON arrays FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON arrays;
CREATE POLICY serverapp_run ON arrays TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON checkpoints;
CREATE POLICY serverapp_run ON checkpoints TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON checkpoint_arrays;
CREATE POLICY serverapp_run ON checkpoint_arrays TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON round_metrics;
CREATE POLICY serverapp_run ON round_metrics TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON run_logs;
CREATE POLICY serverapp_run ON run_logs TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));

CREATE OR REPLACE FUNCTION flpg_my_node_ids() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, public
AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(node_id ORDER BY node_id), '{}')
            FROM public.principal_nodes WHERE role_name = current_user);
END
$$;
CREATE OR REPLACE FUNCTION flpg_my_run_id() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, public
AS $$
BEGIN
    RETURN (SELECT run_id FROM public.principals WHERE role_name = current_user);
END
$$;
CREATE OR REPLACE FUNCTION flpg_message_writer(message bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    RETURN (SELECT created_by FROM public.messages WHERE id = message);
END
$$;
CREATE OR REPLACE FUNCTION flpg_array_writer(arr bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    RETURN (SELECT created_by FROM public.arrays WHERE id = arr);
END
$$;
CREATE OR REPLACE FUNCTION flpg_claimed_destination(instruction bigint, run bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    RETURN (SELECT CASE WHEN run_id = run AND reply_to IS NULL AND state = 'claimed'
                        THEN dst_node_id END
            FROM public.messages WHERE id = instruction);
END
$$;
-- flpg_array_run as runroles.v1 made it (CREATE OR REPLACE keeps its grants).
CREATE OR REPLACE FUNCTION flpg_array_run(arr bigint) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT run_id FROM public.arrays WHERE id = arr
$$;
