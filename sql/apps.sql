-- App bundles, content-addressed.

-- name: apps_insert
-- Stores a bundle once; a second insert of the same hash is a no-op.
INSERT INTO apps (hash, name, bundle, size)
VALUES (%(hash)s, %(name)s, %(bundle)s, %(size)s)
ON CONFLICT (hash) DO NOTHING;

-- name: apps_get
SELECT hash, name, bundle FROM apps WHERE hash = %(hash)s;
