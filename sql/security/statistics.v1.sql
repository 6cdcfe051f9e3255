-- Statistics, version 1 (migration 0016): the link keeps the planner's statistics of
-- the coordination tables fresh while they are young.
--
-- The hot connections plan each statement once and keep the plan (HOT_OPTIONS in
-- flpg/store/db.py) until ANALYZE invalidates it. Without statistics every index of a
-- table looks alike: the ServerApp's reply pull read every message of its run through
-- ix_messages_run_id instead of the one reply each through uq_messages_reply_to, a
-- claim read every instruction in the database through uq_messages_reply_to, a
-- payload listing hashed every array. Autovacuum's first ANALYZE of a new table comes
-- up to autovacuum_naptime (a minute by default) later, and afterwards only once a
-- tenth of the table changed: a new federation's first runs were planned blind.
--
-- flpg_refresh_statistics(min_changes) analyzes each coordination table with at least
-- `min_changes` row changes since its last ANALYZE and at least as many as the rows
-- it had then (so a table is analyzed each time it doubles: a few times while young,
-- after which autovacuum's own rule comes first). Only a link or admin may call it;
-- it runs as the tables' owner. One caller at a time (others return at once), and a
-- table another session is vacuuming or analyzing is skipped, not waited for.
-- The chunk tables are never analyzed here: they are read by primary key only, and
-- sampling them reads payload pages.
-- Never edit a released version: a change is a new file and a migration naming it.

CREATE FUNCTION flpg_refresh_statistics(min_changes bigint) RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
SET lock_timeout = '200ms'
AS $$
DECLARE
    tbl text;
    analyzed text[] := '{}';
BEGIN
    IF flpg_session_kind() IS DISTINCT FROM 'link' AND NOT flpg_session_is_admin() THEN
        RAISE EXCEPTION 'only a link refreshes statistics (role %)', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('flpg_refresh_statistics')) THEN
        RETURN analyzed;
    END IF;
    FOR tbl IN
        SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        WHERE s.schemaname = 'public'
          AND s.relname = ANY(ARRAY['messages', 'message_arrays', 'arrays', 'runs',
                                    'run_nodes', 'nodes', 'principals', 'principal_nodes',
                                    'checkpoints', 'checkpoint_arrays', 'round_metrics'])
          AND s.n_mod_since_analyze >= greatest(min_changes, c.reltuples)
        ORDER BY s.relname
    LOOP
        BEGIN
            EXECUTE format('ANALYZE public.%I', tbl);
            analyzed := analyzed || tbl;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- being vacuumed or analyzed now: the next call looks again
        END;
    END LOOP;
    RETURN analyzed;
END
$$;

REVOKE ALL ON FUNCTION flpg_refresh_statistics(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flpg_refresh_statistics(bigint) TO flpg_link;
