-- Trust, version 3 (migration 0012): the same rows as trust.v2 for every role, with
-- the array reads of nodes, ClientApps and ServerApps decided from the row itself
-- (measured in benchmarks/RESULTS.md, "Row-level security: enrolled roles on vs off").
--
-- 1. A message's array links carry who may read them: `message_arrays.run_id` and
--    `.node_id` (the instruction's destination, the reply's source), set by a trigger
--    from the message row, whatever the inserting statement gives. The SELECT policies
--    of the link table compare these columns with the session's identity (InitPlans,
--    once per statement) instead of an EXISTS over `messages` under its own policies:
--    in trust.v2 every array read of a ClientApp went through array_chunks -> arrays ->
--    message_arrays -> messages, each level planning its nested policy, and a
--    ServerApp's `message_arrays_list` started from every array of its run.
--    `ix_message_arrays_audience (array_id, node_id)` answers the arrays policy's
--    EXISTS for one node without walking the links of a broadcast to every node.
-- 2. The writer lookups and flpg_claimed_destination are PL/pgSQL: a LANGUAGE sql
--    SECURITY DEFINER function is never inlined, so it parsed and planned its query at
--    every call (per row of an insert's WITH CHECK); PL/pgSQL plans once per session.
--    The writers stay VOLATILE: they must see the rows their own statement inserted
--    (an instruction and its links, an array and its chunk).
-- Never edit a released version: a change is a new file and a migration naming it.

-- (1) the links' audience, from the message (SECURITY DEFINER: the message may be
-- one the inserting role cannot select, e.g. a reply a node has just written).
CREATE FUNCTION flpg_link_audience() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    SELECT m.run_id, coalesce(m.dst_node_id, m.src_node_id)
    INTO NEW.run_id, NEW.node_id
    FROM public.messages m WHERE m.id = NEW.message_id;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION flpg_link_audience() FROM PUBLIC;
CREATE TRIGGER tg_message_arrays_audience BEFORE INSERT OR UPDATE ON message_arrays
    FOR EACH ROW EXECUTE FUNCTION flpg_link_audience();

DROP POLICY carried ON message_arrays;
CREATE POLICY carried ON message_arrays FOR SELECT TO flpg_node
    USING (node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
CREATE POLICY carried_in_run ON message_arrays FOR SELECT TO flpg_clientapp
    USING (run_id = (SELECT flpg_my_run_id())
           AND node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
CREATE POLICY serverapp_run ON message_arrays FOR SELECT TO flpg_serverapp
    USING (run_id = (SELECT flpg_my_run_id()));
DROP POLICY user_own ON message_arrays;
CREATE POLICY user_own ON message_arrays FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = message_arrays.run_id));

-- (2) the lookups as PL/pgSQL, same results.
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
