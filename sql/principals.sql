-- Principals: which login role is which node or user (written by admin only).
-- Roles themselves are created and dropped by flpg/store/principals.py (DDL with
-- quoted identifiers); these queries keep the mapping tables in step with them.

-- name: principals_find_node
-- The login role enrolled for node `name`, if any.
SELECT p.role_name, n.id AS node_id
FROM principals p
JOIN principal_nodes pn ON pn.role_name = p.role_name
JOIN nodes n ON n.id = pn.node_id
WHERE p.kind = 'node' AND n.name = %(name)s
ORDER BY p.role_name
LIMIT 1;

-- name: principals_find_user
-- The login role added for user `name`, if any.
SELECT role_name
FROM principals
WHERE kind = 'user' AND user_name = %(name)s
ORDER BY role_name
LIMIT 1;

-- name: principals_insert
INSERT INTO principals (role_name, kind, user_name)
VALUES (%(role_name)s, %(kind)s, %(user_name)s);

-- name: principal_nodes_enrol
-- Maps `role_name` to node `name`: the node row is adopted if registered, else
-- created offline (its worker brings it online); returns the node id.
WITH node AS (
    INSERT INTO nodes (name, status) VALUES (%(name)s, 'offline')
    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
    RETURNING id
)
INSERT INTO principal_nodes (role_name, node_id)
SELECT %(role_name)s, id FROM node
RETURNING node_id;

-- name: principals_delete
-- Removes a role's mapping (its principal_nodes rows go with it, ON DELETE CASCADE).
DELETE FROM principals WHERE role_name = %(role_name)s;

-- name: principals_terminate_sessions
-- Ends every session of `role_name` on the cluster; returns how many were signalled.
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS terminated
FROM pg_stat_activity
WHERE usename = %(role_name)s;

-- name: principals_list
SELECT p.role_name, p.kind, p.user_name, p.run_id, p.created_at,
       coalesce(array_agg(n.name ORDER BY n.id) FILTER (WHERE n.id IS NOT NULL), '{}')
           AS node_names
FROM principals p
LEFT JOIN principal_nodes pn ON pn.role_name = p.role_name
LEFT JOIN nodes n ON n.id = pn.node_id
GROUP BY p.role_name
ORDER BY p.kind, p.role_name;

-- name: principals_role_exists
-- Whether a role of that name exists on the cluster (roles are cluster-wide).
SELECT 1 AS found FROM pg_roles WHERE rolname = %(role_name)s;
