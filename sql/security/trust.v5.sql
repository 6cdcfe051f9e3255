-- Trust, version 5 (migration 0014): the same results as before for every role, from
-- lookups that cost a few microseconds instead of up to a hundred (measured in
-- benchmarks/RESULTS.md, "Row-level security: enrolled roles on vs off").
--
-- A PL/pgSQL `RETURN (SELECT ...)` evaluates its subquery as a full expression at every
-- call (about 90 us here against 4 us for `SELECT ... INTO`, in a micro-benchmark of
-- 10 000 calls); the identity lookups run in every policy InitPlan, the writer lookups
-- once per row of an insert's WITH CHECK. flpg_array_run (checkpoint_arrays' policy) was
-- LANGUAGE sql SECURITY DEFINER, which is never inlined and so planned at every call.
-- Attributes (volatility, SECURITY DEFINER, search_path) are unchanged.
-- Never edit a released version: a change is a new file and a migration naming it.

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
