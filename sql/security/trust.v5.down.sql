-- Undoes trust.v5 (migration 0014 down): the lookups as trust.v2, trust.v3 and
-- runroles.v1 left them.

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
