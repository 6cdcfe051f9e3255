-- Undoes trust.v3 (migration 0012 down): the link policies and lookups as trust.v2
-- left them. The links' audience columns are dropped by the migration afterwards.

DROP TRIGGER tg_message_arrays_audience ON message_arrays;
DROP FUNCTION flpg_link_audience();

DROP POLICY carried ON message_arrays;
DROP POLICY carried_in_run ON message_arrays;
DROP POLICY serverapp_run ON message_arrays;
CREATE POLICY carried ON message_arrays FOR SELECT
    TO flpg_node, flpg_clientapp, flpg_serverapp
    USING (EXISTS (SELECT 1 FROM messages m WHERE m.id = message_arrays.message_id)
           OR flpg_message_writer(message_id) = current_user);
DROP POLICY user_own ON message_arrays;
CREATE POLICY user_own ON message_arrays FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM messages m WHERE m.id = message_arrays.message_id));

CREATE OR REPLACE FUNCTION flpg_message_writer(message bigint) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT created_by FROM public.messages WHERE id = message
$$;
CREATE OR REPLACE FUNCTION flpg_array_writer(arr bigint) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT created_by FROM public.arrays WHERE id = arr
$$;
CREATE OR REPLACE FUNCTION flpg_claimed_destination(instruction bigint, run bigint)
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT CASE WHEN run_id = run AND reply_to IS NULL AND state = 'claimed'
                THEN dst_node_id END
    FROM public.messages WHERE id = instruction
$$;
