-- Principals: which login role is which node, user, link, exec or auditor (written
-- by admin only). Roles themselves are created and dropped by
-- flpg/store/principals.py (DDL with quoted identifiers); these queries keep the
-- mapping tables in step with them.

-- name: principals_find
-- The login role of `kind` participant `name`, with the node ids (and names) it
-- answers for: the role `role_name` that enrolment names after it, else a node role
-- mapped to node `name` (one of a --virtual role's node ids, or enrolled by hand),
-- else a role of that kind whose principals row names `name`.
SELECT p.role_name,
       coalesce(array_agg(n.id ORDER BY n.id) FILTER (WHERE n.id IS NOT NULL), '{}')
           AS node_ids,
       coalesce(array_agg(n.name ORDER BY n.id) FILTER (WHERE n.id IS NOT NULL), '{}')
           AS node_names
FROM principals p
LEFT JOIN principal_nodes pn ON pn.role_name = p.role_name
LEFT JOIN nodes n ON n.id = pn.node_id
WHERE p.kind = %(kind)s
  AND (p.role_name = %(role_name)s
       OR p.user_name = %(name)s
       OR (p.kind = 'node' AND p.role_name IN (
               SELECT m.role_name FROM principal_nodes m JOIN nodes mn ON mn.id = m.node_id
               WHERE mn.name = %(name)s)))
GROUP BY p.role_name
ORDER BY p.role_name = %(role_name)s DESC, p.role_name
LIMIT 1;

-- name: principals_insert
INSERT INTO principals (role_name, kind, user_name)
VALUES (%(role_name)s, %(kind)s, %(user_name)s);

-- name: principal_nodes_enrol
-- Maps `role_name` to node `name`: the node row is adopted if registered, else
-- created offline (its worker brings it online); a node config or labels given
-- (not null) replace the row's, else an adopted row keeps its own; a removed node is
-- back. Returns the id.
WITH node AS (
    INSERT INTO nodes (name, status, node_config, labels)
    VALUES (%(name)s, 'offline', coalesce(%(node_config)s::jsonb, '{}'),
            coalesce(%(labels)s::jsonb, '{}'))
    ON CONFLICT (name) DO UPDATE
        SET node_config = coalesce(%(node_config)s::jsonb, nodes.node_config),
            labels = coalesce(%(labels)s::jsonb, nodes.labels),
            removed_at = NULL
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
