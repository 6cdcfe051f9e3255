-- Group roles of the trust model, version 1 (migration 0007).
-- Roles belong to the cluster, not to one database: several flpg databases may
-- share a cluster and migrate at the same moment, so each role is created only if
-- missing, and a concurrent creator's duplicate_object / unique_violation is fine.
-- Login roles (one per node, user, run's ServerApp or ClientApp, link, exec,
-- auditor) are members of exactly one of these groups; none of them can log in,
-- own anything, or read server files or run server programs.
-- Never edit a released version: a change is a new file and a migration naming it.

DO $$
DECLARE
    kind text;
BEGIN
    FOREACH kind IN ARRAY ARRAY['node', 'user', 'serverapp', 'clientapp', 'link', 'exec',
                                'auditor']
    LOOP
        -- Checked first, so that an owner without CREATEROLE can migrate once a
        -- superuser (or an earlier migration) created the roles.
        CONTINUE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = 'flpg_' || kind);
        BEGIN
            EXECUTE format(
                'CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
                ' NOBYPASSRLS', 'flpg_' || kind);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database on the cluster created it at the same moment
        END;
    END LOOP;
END
$$;
