-- Federation members.

-- name: nodes_register
-- Registers a node by name or re-attaches to the existing id (several workers may
-- serve one node); the node is online from now.
INSERT INTO nodes (name, node_config, labels)
VALUES (%(name)s, %(node_config)s, %(labels)s)
ON CONFLICT (name) DO UPDATE
    SET node_config = EXCLUDED.node_config,
        labels = EXCLUDED.labels,
        status = 'online',
        last_seen_at = now()
RETURNING id, name, node_config, labels, status, registered_at, last_seen_at;

-- name: nodes_enrolled
-- The node ids (and names) enrolled for the connected role: none unless it is an
-- enrolled node (admin registers nodes itself). Read from the principal mapping, not
-- pg_has_role: a superuser counts as a member of every role.
SELECT n.id, n.name
FROM principals p
JOIN principal_nodes pn ON pn.role_name = p.role_name
JOIN nodes n ON n.id = pn.node_id
WHERE p.role_name = current_user AND p.kind = 'node'
ORDER BY n.id;

-- name: nodes_attach
-- An enrolled node's worker attaches to the node ids admin enrolled for its role
-- (labels and config are admin's): they are online from now.
UPDATE nodes SET status = 'online', last_seen_at = now()
WHERE id = ANY(flpg_my_node_ids())
RETURNING id, name, node_config, labels, status, registered_at, last_seen_at;

-- name: nodes_heartbeat
UPDATE nodes SET last_seen_at = now(), status = 'online'
WHERE id = ANY(%(node_ids)s);

-- name: nodes_set_offline
UPDATE nodes SET status = 'offline'
WHERE id = ANY(%(node_ids)s);

-- name: nodes_list
SELECT id, name, node_config, labels, status, registered_at, last_seen_at
FROM nodes
ORDER BY id;

-- name: nodes_mark_silent_offline
-- Link sweep: nodes whose workers stopped heart-beating go offline.
UPDATE nodes SET status = 'offline'
WHERE status = 'online'
  AND last_seen_at < now() - make_interval(secs => %(after)s)
RETURNING id, name;

-- name: nodes_notify
-- Wakes the workers of each node; the payload is the run id (ids only, tiny).
SELECT pg_notify('flpg_node_' || n, %(run_id)s::text)
FROM unnest(%(node_ids)s::bigint[]) AS n;
