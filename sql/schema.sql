-- Reading the state of the schema itself, before migrating it (flpg.store.migrate).

-- name: schema_get_revision
-- The Alembic revision the database is at; fails with undefined_table when the
-- database has never been migrated.
SELECT version_num FROM alembic_version;

-- name: schema_list_existing_names
-- Objects in the current schema whose names flpg's schema uses: tables, views,
-- sequences (relations) and enum or domain types. A database that was never
-- migrated must have none, or the first migration would collide with them.
SELECT c.relname AS name,
       CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'view'
                      WHEN 'S' THEN 'sequence' ELSE 'table' END AS kind
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace
  AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
  AND c.relname = ANY(%(names)s)
UNION ALL
SELECT t.typname, 'type'
FROM pg_type t
WHERE t.typnamespace = current_schema()::regnamespace
  AND t.typtype IN ('e', 'd')
  AND t.typname = ANY(%(names)s)
ORDER BY 1;

-- name: schema_list_table_sizes
-- `flpg db status`: the database's size, and its `limit` largest tables in the
-- current schema by total relation size (heap, TOAST, indexes), largest first.
SELECT c.relname AS name, pg_total_relation_size(c.oid)::bigint AS bytes,
       pg_database_size(current_database())::bigint AS database_bytes
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace
  AND c.relkind IN ('r', 'p', 'm')
ORDER BY bytes DESC, name
LIMIT %(limit)s;

-- name: schema_refresh_statistics
-- Link sweep: analyzes each coordination table with at least `min_changes` row
-- changes since its last ANALYZE, and at least as many as it had rows then; returns
-- the names of the tables it analyzed (none while another link is at it). See
-- sql/security/statistics.v1.sql.
SELECT flpg_refresh_statistics(%(min_changes)s) AS analyzed;
