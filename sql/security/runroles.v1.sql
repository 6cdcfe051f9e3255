-- Run roles, version 1 (migration 0008): a login role per launch of a run's
-- ServerApp, and per run and node worker for its ClientApp processes, so that tenant
-- code never holds its exec's or its node's credential (nor admin's).
--
-- The roles are created and dropped by SECURITY DEFINER functions, owned by admin
-- (the tables' owner, who needs CREATEROLE): an exec or a node cannot create roles
-- itself, and must not be able to (CREATEROLE could grant itself any group). Each
-- function checks who calls it by `session_user`, the login role of the connection
-- (inside a SECURITY DEFINER function `current_user` is the owner):
--   * flpg_serverapp_login(run): an exec, or admin; the run must be starting or
--     running. The role is a member of flpg_serverapp bound to the run.
--   * flpg_clientapp_login(run, nodes): a node, or admin; the role is a member of
--     flpg_clientapp bound to the run and to the node ids among `nodes` that the run
--     selected and (for a node) that the caller answers for.
--   * flpg_run_role_drop(role): the exec a ServerApp role was made for (any exec),
--     the node whose node ids a ClientApp role holds, or admin.
--   * flpg_run_roles_collect(grace): the link: drops the run roles of runs that
--     ended at least `grace` seconds ago, and this database's run roles whose
--     principals row is gone (the run was deleted).
-- Every run role made is recorded in `run_roles` (kept after it is dropped).
-- A role's name is flpg_run_<8 hex of the database name>_<run>_<s|c>_<12 random hex>
-- (roles are cluster-wide; several flpg databases may share a cluster). Its password
-- is 64 hex digits from gen_random_uuid() (pg_strong_random) and is returned once.
-- Never edit a released version: a change is a new file and a migration naming it.

CREATE FUNCTION flpg_run_role_prefix() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, public
AS $$
    SELECT 'flpg_run_' || substr(md5(current_database()), 1, 8) || '_'
$$;

-- Whether the connection's login role is admin: a superuser or a member of the role
-- that owns the tables.
CREATE FUNCTION flpg_session_is_admin() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, public
AS $$
    SELECT pg_has_role(session_user, c.relowner, 'MEMBER')
    FROM pg_class c WHERE c.oid = 'public.runs'::regclass
$$;

-- The principals kind of the connection's login role (NULL for admin or unknown).
CREATE FUNCTION flpg_session_kind() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT kind FROM public.principals WHERE role_name = session_user
$$;

-- Creates a run role of `kind` for `run`, mapped to `nodes`; returns its name and
-- password. Called only by the functions below (no EXECUTE grant).
CREATE FUNCTION flpg_create_run_role(run bigint, kind text, nodes bigint[],
                                     OUT role_name text, OUT password text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    role_name := flpg_run_role_prefix() || run || '_' || left(kind, 1) || '_'
        || left(replace(gen_random_uuid()::text, '-', ''), 12);
    password := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    EXECUTE format(
        'CREATE ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE'
        ' NOREPLICATION NOBYPASSRLS IN ROLE %I',
        role_name, password, 'flpg_' || kind);
    INSERT INTO public.principals (role_name, kind, run_id) VALUES (role_name, kind, run);
    INSERT INTO public.run_roles (role_name, kind, run_id, node_ids, made_for)
    VALUES (role_name, kind, run, nodes, session_user);
    INSERT INTO public.principal_nodes (role_name, node_id)
    SELECT role_name, unnest(nodes);
END
$$;

CREATE FUNCTION flpg_serverapp_login(run bigint, OUT role_name text, OUT password text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF flpg_session_kind() IS DISTINCT FROM 'exec' AND NOT flpg_session_is_admin() THEN
        RAISE EXCEPTION 'only an exec launches ServerApps (role %)', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT FROM public.runs r
                   WHERE r.id = run AND r.status IN ('starting', 'running')) THEN
        RAISE EXCEPTION 'run % is not being launched', run
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT c.role_name, c.password INTO role_name, password
    FROM flpg_create_run_role(run, 'serverapp', '{}') c;
END
$$;

CREATE FUNCTION flpg_clientapp_login(run bigint, nodes bigint[],
                                     OUT role_name text, OUT password text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    caller text := flpg_session_kind();
    allowed bigint[];
BEGIN
    IF caller IS DISTINCT FROM 'node' AND NOT flpg_session_is_admin() THEN
        RAISE EXCEPTION 'only a node starts ClientApps (role %)', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT coalesce(array_agg(rn.node_id ORDER BY rn.node_id), '{}') INTO allowed
    FROM public.run_nodes rn
    JOIN public.runs r ON r.id = rn.run_id
    WHERE rn.run_id = run AND rn.node_id = ANY(nodes)
      AND r.status NOT IN ('finished', 'failed', 'stopped')
      AND (caller IS DISTINCT FROM 'node' OR rn.node_id IN (
               SELECT pn.node_id FROM public.principal_nodes pn
               WHERE pn.role_name = session_user));
    IF cardinality(allowed) = 0 THEN
        RAISE EXCEPTION 'run % is not live on node ids % of role %', run, nodes, session_user
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT c.role_name, c.password INTO role_name, password
    FROM flpg_create_run_role(run, 'clientapp', allowed) c;
END
$$;

-- Drops run role `role` (its sessions end first); false if it was gone already.
-- Called by the functions around it (no check of the caller).
CREATE FUNCTION flpg_drop_run_role(role text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF left(role, length(flpg_run_role_prefix())) <> flpg_run_role_prefix() THEN
        RAISE EXCEPTION 'role % is not a run role of this database', role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM public.principals WHERE role_name = role;
    UPDATE public.run_roles SET dropped_at = now()
    WHERE role_name = role AND dropped_at IS NULL;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
        RETURN false;
    END IF;
    EXECUTE format('ALTER ROLE %I NOLOGIN', role);
    BEGIN
        PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = role;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;  -- an owner without pg_signal_backend: the sessions find no mapping row
    END;
    -- What the role may have made despite the grants (a large object, default
    -- privileges) would block DROP ROLE: drop it first. If the drop still fails, the
    -- role stays unmapped and NOLOGIN (this block alone rolls back), and the link's
    -- next collection tries again.
    BEGIN
        EXECUTE format('DROP OWNED BY %I', role);
        EXECUTE format('DROP ROLE IF EXISTS %I', role);
    EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege
                   OR object_in_use THEN
        RAISE WARNING 'run role % not dropped yet: %', role, SQLERRM;
    END;
    RETURN NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role);
END
$$;

CREATE FUNCTION flpg_run_role_drop(role text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    caller text := flpg_session_kind();
    target text;
BEGIN
    SELECT kind INTO target FROM public.principals WHERE role_name = role;
    IF NOT flpg_session_is_admin() AND NOT (
        caller = 'exec' AND target = 'serverapp'
        OR caller = 'node' AND target = 'clientapp' AND NOT EXISTS (
            SELECT FROM public.principal_nodes pn WHERE pn.role_name = role
              AND pn.node_id NOT IN (SELECT mine.node_id FROM public.principal_nodes mine
                                     WHERE mine.role_name = session_user)))
    THEN
        RAISE EXCEPTION 'role % may not drop role %', session_user, role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN flpg_drop_run_role(role);
END
$$;

CREATE FUNCTION flpg_run_roles_collect(grace double precision) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    role text;
    dropped integer := 0;
BEGIN
    IF flpg_session_kind() IS DISTINCT FROM 'link' AND NOT flpg_session_is_admin() THEN
        RAISE EXCEPTION 'only a link collects run roles (role %)', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    FOR role IN
        SELECT p.role_name FROM public.principals p JOIN public.runs r ON r.id = p.run_id
        WHERE p.kind IN ('serverapp', 'clientapp')
          AND r.finished_at < now() - make_interval(secs => grace)
        UNION
        SELECT g.rolname FROM pg_roles g
        WHERE left(g.rolname, length(flpg_run_role_prefix())) = flpg_run_role_prefix()
          AND NOT EXISTS (SELECT FROM public.principals p WHERE p.role_name = g.rolname)
    LOOP
        BEGIN
            IF flpg_drop_run_role(role) THEN
                dropped := dropped + 1;
            END IF;
        EXCEPTION WHEN undefined_object OR dependent_objects_still_exist
                       OR object_in_use THEN
            NULL;  -- dropped meanwhile, or still in use: the next sweep tries again
        END;
    END LOOP;
    RETURN dropped;
END
$$;

REVOKE ALL ON FUNCTION flpg_run_role_prefix(), flpg_session_is_admin(), flpg_session_kind(),
    flpg_create_run_role(bigint, text, bigint[]), flpg_serverapp_login(bigint),
    flpg_clientapp_login(bigint, bigint[]), flpg_drop_run_role(text),
    flpg_run_role_drop(text), flpg_run_roles_collect(double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flpg_serverapp_login(bigint) TO flpg_exec;
GRANT EXECUTE ON FUNCTION flpg_clientapp_login(bigint, bigint[]) TO flpg_node;
GRANT EXECUTE ON FUNCTION flpg_run_role_drop(text) TO flpg_exec, flpg_node;
GRANT EXECUTE ON FUNCTION flpg_run_roles_collect(double precision) TO flpg_link;

-- A run's arrays belong to the run, not to one launch: a restarted or resumed
-- ServerApp sends the arrays of its checkpoint, which an earlier launch's role wrote.
-- (Its own new arrays pass the own_messages policy of trust.v1.)
CREATE POLICY serverapp_run_arrays ON message_arrays FOR INSERT TO flpg_serverapp
    WITH CHECK (flpg_message_writer(message_id) = current_user
                AND EXISTS (SELECT 1 FROM arrays a WHERE a.id = message_arrays.array_id));

-- The run an array belongs to, for a policy on a table that links arrays: SECURITY
-- DEFINER (the caller may not see the array) and VOLATILE (it sees an array inserted
-- by the same statement).
CREATE FUNCTION flpg_array_run(arr bigint) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT run_id FROM public.arrays WHERE id = arr
$$;
REVOKE ALL ON FUNCTION flpg_array_run(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flpg_array_run(bigint) TO flpg_serverapp;

-- A checkpoint holds arrays of its own run only (a foreign key check ignores
-- row-level security: without this a ServerApp could pin another run's array).
CREATE POLICY own_run_arrays ON checkpoint_arrays AS RESTRICTIVE FOR INSERT
    TO flpg_serverapp
    WITH CHECK (flpg_array_run(array_id) = run_id);

-- Ids come from the sequences, drawn by the inserting session: an id ahead of the
-- sequence would make another run's later insert fail on the primary key.
CREATE POLICY drawn_ids ON messages AS RESTRICTIVE FOR INSERT TO flpg_serverapp
    WITH CHECK (id <= currval('public.messages_id_seq'));
CREATE POLICY drawn_ids ON arrays AS RESTRICTIVE FOR INSERT
    TO flpg_serverapp, flpg_clientapp, flpg_node
    WITH CHECK (id <= currval('public.arrays_id_seq'));

-- The run roles' audit trail: written by the functions above only; the auditor reads
-- it all, a user the rows of their own runs.
ALTER TABLE run_roles ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON run_roles TO flpg_auditor, flpg_user;
CREATE POLICY every_row ON run_roles FOR SELECT TO flpg_auditor USING (true);
CREATE POLICY user_own ON run_roles FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = run_roles.run_id));

-- Only flpg's roles (and admin) connect to this database, and none makes temporary
-- tables or large objects (objects a run role owned would outlive it). Database
-- privileges are not copied by CREATE DATABASE ... TEMPLATE: admin runs
-- `SELECT flpg_restrict_database()` in a copy. Revoking the large-object functions
-- needs their owner (a superuser); an admin that is not is told so in a notice.
CREATE FUNCTION flpg_restrict_database() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, public
AS $$
BEGIN
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO flpg_node, flpg_user, flpg_serverapp,'
                   ' flpg_clientapp, flpg_link, flpg_exec, flpg_auditor', current_database());
    BEGIN
        REVOKE EXECUTE ON FUNCTION pg_catalog.lo_create(oid), pg_catalog.lo_creat(integer),
            pg_catalog.lo_from_bytea(oid, bytea) FROM PUBLIC;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'large objects stay open to PUBLIC: only their owner may revoke them';
    END;
END
$$;
REVOKE ALL ON FUNCTION flpg_restrict_database() FROM PUBLIC;
SELECT flpg_restrict_database();
