-- Trust, version 2 (migration 0010): the same rows as trust.v1 for every role, with
-- policies the planner evaluates cheaply (measured in benchmarks/RESULTS.md, "Row-level
-- security: enrolled roles on vs off"; benchmarks/rls_cost.py).
--
-- 1. Identity lookups run once per statement: each `flpg_my_node_ids()` /
--    `flpg_my_run_id()` in a policy is a scalar subquery, i.e. an InitPlan whose value
--    is a constant for the rest of the statement (and usable as an index key). In
--    trust.v1 the STABLE function ran for every row a policy filtered (74 939 calls,
--    12.6 s of backend time in one N=32 x 1 MB run of 3 rounds).
-- 2. The two lookups are PL/pgSQL, so their query is planned once per session.
-- 3. flpg_claimed_destination reads the instruction by primary key only.
-- 4. The claim policies' USING drops `reply_to IS NULL`, implied by dst_node_id
--    (ck_messages_direction): it let the planner answer messages_claim's per-row
--    `m.id = o.id ... FOR UPDATE SKIP LOCKED` by scanning a partial index for every
--    claimed row instead of the primary key. WITH CHECK keeps it.
-- Never edit a released version: a change is a new file and a migration naming it.

DROP POLICY node_own ON nodes;
CREATE POLICY node_own ON nodes TO flpg_node USING (id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY node_selected ON run_nodes;
CREATE POLICY node_selected ON run_nodes TO flpg_node
    USING (node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY node_messages ON messages;
CREATE POLICY node_messages ON messages FOR SELECT TO flpg_node
    USING (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
           OR src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
DROP POLICY node_replies ON messages;
CREATE POLICY node_replies ON messages FOR INSERT TO flpg_node
    WITH CHECK (reply_to IS NOT NULL AND src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));

DROP POLICY clientapp_run ON runs;
CREATE POLICY clientapp_run ON runs FOR SELECT TO flpg_clientapp
    USING (id = (SELECT flpg_my_run_id()));
DROP POLICY clientapp_selected ON run_nodes;
CREATE POLICY clientapp_selected ON run_nodes TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id()) AND node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
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
DROP POLICY clientapp_writes ON arrays;
CREATE POLICY clientapp_writes ON arrays FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = (SELECT flpg_my_run_id()));

DROP POLICY serverapp_run ON runs;
CREATE POLICY serverapp_run ON runs TO flpg_serverapp USING (id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON run_nodes;
CREATE POLICY serverapp_run ON run_nodes FOR SELECT TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY serverapp_run ON messages;
CREATE POLICY serverapp_run ON messages TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
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

-- (2) the identity lookups as PL/pgSQL, whose query plan is cached for the
-- session (a LANGUAGE sql function that cannot be inlined parses and plans its body at
-- each call site of each statement; the InitPlans above are ~10 per hot statement).
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

-- (3) the claimed instruction's destination by primary key only. The
-- released body also names `state = 'claimed'` and `run_id` in WHERE, so its (generic)
-- plan may read the instruction through ix_messages_lease or ix_messages_run_id, which
-- grow with every claimed or run message; the same conditions in the select list
-- leave pk_messages as the only usable index. Same result: NULL unless the instruction
-- of that run is claimed.
CREATE OR REPLACE FUNCTION flpg_claimed_destination(instruction bigint, run bigint)
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT CASE WHEN run_id = run AND reply_to IS NULL AND state = 'claimed'
                THEN dst_node_id END
    FROM public.messages WHERE id = instruction
$$;

-- (4) the claim policies' USING without `reply_to IS NULL`. A row with a
-- dst_node_id is always an instruction (ck_messages_direction: replies have none), so
-- the rows are the same; but the extra qual made the partial indexes ix_messages_deadline
-- and ix_messages_claim usable for messages_claim's per-row `m.id = o.id ... FOR UPDATE`,
-- and with the statistics of a young table the planner scanned one of them per claimed
-- row instead of taking the primary key. WITH CHECK keeps it (it plans no scan).
DROP POLICY node_claims ON messages;
CREATE POLICY node_claims ON messages FOR UPDATE TO flpg_node
    USING (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]))
    WITH CHECK (reply_to IS NULL AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND state IN ('queued', 'claimed', 'done'));
DROP POLICY clientapp_claims ON messages;
CREATE POLICY clientapp_claims ON messages FOR UPDATE TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id())
           AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]))
    WITH CHECK (run_id = (SELECT flpg_my_run_id()) AND reply_to IS NULL
                AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                AND state IN ('queued', 'claimed', 'done'));
