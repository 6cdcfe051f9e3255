-- Undoes runroles.v1.sql (migration 0008's downgrade): the run roles of this database
-- are dropped, then the functions; CONNECT goes back to PUBLIC.

DO $$
DECLARE
    role text;
BEGIN
    FOR role IN
        SELECT rolname FROM pg_roles
        WHERE left(rolname, length(flpg_run_role_prefix())) = flpg_run_role_prefix()
    LOOP
        PERFORM flpg_drop_run_role(role);
    END LOOP;
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO PUBLIC', current_database());
    BEGIN
        GRANT EXECUTE ON FUNCTION pg_catalog.lo_create(oid), pg_catalog.lo_creat(integer),
            pg_catalog.lo_from_bytea(oid, bytea) TO PUBLIC;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
END
$$;

DROP POLICY serverapp_run_arrays ON message_arrays;
DROP POLICY own_run_arrays ON checkpoint_arrays;
DROP POLICY drawn_ids ON messages;
DROP POLICY drawn_ids ON arrays;
DROP FUNCTION flpg_array_run(bigint);
DROP FUNCTION flpg_restrict_database();
DROP FUNCTION flpg_run_roles_collect(double precision);
DROP FUNCTION flpg_run_role_drop(text);
DROP FUNCTION flpg_drop_run_role(text);
DROP FUNCTION flpg_clientapp_login(bigint, bigint[]);
DROP FUNCTION flpg_serverapp_login(bigint);
DROP FUNCTION flpg_create_run_role(bigint, text, bigint[]);
DROP FUNCTION flpg_session_kind();
DROP FUNCTION flpg_session_is_admin();
DROP FUNCTION flpg_run_role_prefix();
