-- Trust, version 5 (migration 0014): the same rows for every role as trust.v4, with
-- identity and writer lookups that cost a few microseconds (measured in
-- benchmarks/RESULTS.md, "Row-level security: enrolled roles on vs off").
--
-- 1. The policies read the connection's identity from the views my_run and my_nodes
--    (sql/views/), `(SELECT run_id FROM my_run)` and `ANY((SELECT node_ids FROM
--    my_nodes)::bigint[])`: an InitPlan the planner builds from the view's query, with no
--    function call (half the cost of `(SELECT flpg_my_run_id())` per InitPlan here,
--    and a hot statement has up to fifteen). The same rows: principals and
--    principal_nodes keyed by current_user, as the functions read them.
-- 2. The lookups that stay functions are PL/pgSQL `SELECT ... INTO`: a `RETURN
--    (SELECT ...)` evaluates its subquery as a full expression at every call (about
--    90 us here against 4 us, in a micro-benchmark of 10 000 calls). They run once per
--    row of an insert's WITH CHECK (writers, claimed destination, array run) or in
--    apps' own SQL (flpg_my_run_id, flpg_my_node_ids). flpg_array_run was LANGUAGE sql
--    SECURITY DEFINER, which is never inlined and so planned at every call.
--    Attributes (volatility, SECURITY DEFINER, search_path) are unchanged.
-- Never edit a released version: a change is a new file and a migration naming it.

-- (1) the policies that named flpg_my_run_id() / flpg_my_node_ids() (trust.v2, v3).
DROP POLICY clientapp_run ON runs;
CREATE POLICY clientapp_run ON runs FOR SELECT TO flpg_clientapp
    USING (id = (SELECT run_id FROM my_run));
DROP POLICY serverapp_run ON runs;
CREATE POLICY serverapp_run ON runs TO flpg_serverapp USING (id = (SELECT run_id FROM my_run));
DROP POLICY clientapp_selected ON run_nodes;
CREATE POLICY clientapp_selected ON run_nodes TO flpg_clientapp
    USING (run_id = (SELECT run_id FROM my_run) AND node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]));
DROP POLICY node_selected ON run_nodes;
CREATE POLICY node_selected ON run_nodes TO flpg_node
    USING (node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]));
DROP POLICY serverapp_run ON run_nodes;
CREATE POLICY serverapp_run ON run_nodes FOR SELECT TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY node_own ON nodes;
CREATE POLICY node_own ON nodes TO flpg_node USING (id = ANY((SELECT node_ids FROM my_nodes)::bigint[]));
DROP POLICY clientapp_claims ON messages;
CREATE POLICY clientapp_claims ON messages FOR UPDATE TO flpg_clientapp
    USING (run_id = (SELECT run_id FROM my_run)
           AND dst_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]))
    WITH CHECK (run_id = (SELECT run_id FROM my_run) AND reply_to IS NULL
                AND dst_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])
                AND state IN ('queued', 'claimed', 'done'));
DROP POLICY clientapp_messages ON messages;
CREATE POLICY clientapp_messages ON messages FOR SELECT TO flpg_clientapp
    USING (run_id = (SELECT run_id FROM my_run)
           AND (dst_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])
                OR src_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])));
DROP POLICY clientapp_replies ON messages;
CREATE POLICY clientapp_replies ON messages FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = (SELECT run_id FROM my_run) AND reply_to IS NOT NULL
                AND src_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));
DROP POLICY node_claims ON messages;
CREATE POLICY node_claims ON messages FOR UPDATE TO flpg_node
    USING (dst_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]))
    WITH CHECK (reply_to IS NULL AND dst_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])
                AND state IN ('queued', 'claimed', 'done'));
DROP POLICY node_messages ON messages;
CREATE POLICY node_messages ON messages FOR SELECT TO flpg_node
    USING (dst_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])
           OR src_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]));
DROP POLICY node_replies ON messages;
CREATE POLICY node_replies ON messages FOR INSERT TO flpg_node
    WITH CHECK (reply_to IS NOT NULL AND src_node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[])
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));
DROP POLICY serverapp_run ON messages;
CREATE POLICY serverapp_run ON messages TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY carried ON message_arrays;
CREATE POLICY carried ON message_arrays FOR SELECT TO flpg_node
    USING (node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]));
DROP POLICY carried_in_run ON message_arrays;
CREATE POLICY carried_in_run ON message_arrays FOR SELECT TO flpg_clientapp
    USING (run_id = (SELECT run_id FROM my_run)
           AND node_id = ANY((SELECT node_ids FROM my_nodes)::bigint[]));
DROP POLICY serverapp_run ON message_arrays;
CREATE POLICY serverapp_run ON message_arrays FOR SELECT TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY clientapp_writes ON arrays;
CREATE POLICY clientapp_writes ON arrays FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = (SELECT run_id FROM my_run));
DROP POLICY serverapp_run ON arrays;
CREATE POLICY serverapp_run ON arrays TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY serverapp_run ON checkpoints;
CREATE POLICY serverapp_run ON checkpoints TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY serverapp_run ON checkpoint_arrays;
CREATE POLICY serverapp_run ON checkpoint_arrays TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY serverapp_run ON round_metrics;
CREATE POLICY serverapp_run ON round_metrics TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));
DROP POLICY serverapp_run ON run_logs;
CREATE POLICY serverapp_run ON run_logs TO flpg_serverapp
    USING (run_id = (SELECT run_id FROM my_run));

-- (2) the lookups.
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

CREATE OR REPLACE FUNCTION flpg_message_writer(message bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    writer text;
BEGIN
    SELECT created_by INTO writer FROM public.messages WHERE id = message;
    RETURN writer;
END
$$;

CREATE OR REPLACE FUNCTION flpg_array_writer(arr bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    writer text;
BEGIN
    SELECT created_by INTO writer FROM public.arrays WHERE id = arr;
    RETURN writer;
END
$$;

-- NULL unless the instruction of that run is claimed (conditions in the select list,
-- so that only pk_messages serves the lookup; see trust.v2).
CREATE OR REPLACE FUNCTION flpg_claimed_destination(instruction bigint, run bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    destination bigint;
BEGIN
    SELECT CASE WHEN run_id = run AND reply_to IS NULL AND state = 'claimed'
                THEN dst_node_id END
    INTO destination
    FROM public.messages WHERE id = instruction;
    RETURN destination;
END
$$;

CREATE OR REPLACE FUNCTION flpg_array_run(arr bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    run bigint;
BEGIN
    SELECT run_id INTO run FROM public.arrays WHERE id = arr;
    RETURN run;
END
$$;
