-- Run roles: the login roles of a run's ServerApp and ClientApp processes, made and
-- dropped by the SECURITY DEFINER functions of sql/security/runroles.v1.sql (which
-- check who calls them).

-- name: run_roles_serverapp_login
-- A new ServerApp role for run `run_id` (an exec, or admin; the run is launching).
SELECT role_name, password FROM flpg_serverapp_login(%(run_id)s);

-- name: run_roles_clientapp_login
-- A new ClientApp role for run `run_id` on those of `node_ids` the run selected (and,
-- for a node, that it answers for).
SELECT role_name, password FROM flpg_clientapp_login(%(run_id)s, %(node_ids)s::bigint[]);

-- name: run_roles_drop
-- Drops a run role (its sessions end); false if it was gone already.
SELECT flpg_run_role_drop(%(role_name)s) AS dropped;

-- name: run_roles_collect
-- Drops the run roles of runs that ended `grace` seconds ago or more, and orphans.
SELECT flpg_run_roles_collect(%(grace)s) AS dropped;

-- name: run_roles_drop_made_for
-- Admin, revoking a node or exec: drops the live run roles made for that role (its
-- ClientApp or ServerApp processes lose their credential with it); how many.
SELECT count(*) FILTER (WHERE flpg_drop_run_role(role_name)) AS dropped
FROM run_roles
WHERE made_for = %(role_name)s AND dropped_at IS NULL;
