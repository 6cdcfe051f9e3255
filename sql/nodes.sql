-- Federation members.

-- name: nodes_register
-- Registers a node by name or re-attaches to the existing id (several workers may
-- serve one node); the node is online from now (a removed one is back).
INSERT INTO nodes (name, node_config, labels)
VALUES (%(name)s, %(node_config)s, %(labels)s)
ON CONFLICT (name) DO UPDATE
    SET node_config = EXCLUDED.node_config,
        labels = EXCLUDED.labels,
        status = 'online',
        last_seen_at = now(),
        removed_at = NULL
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
-- A removed node's old worker stays out: it comes back by registering again.
UPDATE nodes SET last_seen_at = now(), status = 'online'
WHERE id = ANY(%(node_ids)s) AND removed_at IS NULL;

-- name: nodes_set_offline
UPDATE nodes SET status = 'offline'
WHERE id = ANY(%(node_ids)s);

-- name: nodes_list
-- The nodes of the federation (removed ones are left out).
SELECT id, name, node_config, labels, status, registered_at, last_seen_at
FROM nodes
WHERE removed_at IS NULL
ORDER BY id;

-- name: nodes_remove
-- Takes offline node `node_id` out of the federation, its row and history kept; no
-- row unless it is offline, not removed yet, and not enrolled (revoke that first).
UPDATE nodes SET removed_at = now()
WHERE id = %(node_id)s AND status = 'offline' AND removed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM principal_nodes pn WHERE pn.node_id = nodes.id)
RETURNING id, name, removed_at;

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
