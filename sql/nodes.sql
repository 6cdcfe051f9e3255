-- Federation members.

-- name: node_register
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

-- name: node_heartbeat
UPDATE nodes SET last_seen_at = now(), status = 'online'
WHERE id = ANY(%(node_ids)s);

-- name: node_set_offline
UPDATE nodes SET status = 'offline'
WHERE id = ANY(%(node_ids)s);

-- name: node_list
SELECT id, name, node_config, labels, status, registered_at, last_seen_at
FROM nodes
ORDER BY id;

-- name: nodes_mark_silent_offline
-- Link sweep: nodes whose workers stopped heart-beating go offline.
UPDATE nodes SET status = 'offline'
WHERE status = 'online'
  AND last_seen_at < now() - make_interval(secs => %(after)s)
RETURNING id, name;
