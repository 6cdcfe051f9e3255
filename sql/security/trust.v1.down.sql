-- Undoes trust.v1.sql (migration 0007's downgrade): policies, row-level security,
-- grants, triggers and functions go. The group roles stay: they belong to the
-- cluster, and other flpg databases on it may still use them.

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname, tablename FROM pg_policies WHERE schemaname = 'public'
    LOOP
        EXECUTE format('DROP POLICY %I ON public.%I', p.policyname, p.tablename);
    END LOOP;
END
$$;

ALTER TABLE principals DISABLE ROW LEVEL SECURITY;
ALTER TABLE principal_nodes DISABLE ROW LEVEL SECURITY;
ALTER TABLE nodes DISABLE ROW LEVEL SECURITY;
ALTER TABLE apps DISABLE ROW LEVEL SECURITY;
ALTER TABLE runs DISABLE ROW LEVEL SECURITY;
ALTER TABLE run_nodes DISABLE ROW LEVEL SECURITY;
ALTER TABLE messages DISABLE ROW LEVEL SECURITY;
ALTER TABLE message_arrays DISABLE ROW LEVEL SECURITY;
ALTER TABLE arrays DISABLE ROW LEVEL SECURITY;
ALTER TABLE array_chunks DISABLE ROW LEVEL SECURITY;
ALTER TABLE checkpoints DISABLE ROW LEVEL SECURITY;
ALTER TABLE checkpoint_arrays DISABLE ROW LEVEL SECURITY;
ALTER TABLE round_metrics DISABLE ROW LEVEL SECURITY;
ALTER TABLE run_logs DISABLE ROW LEVEL SECURITY;

ALTER VIEW run_history RESET (security_invoker);
ALTER VIEW round_history RESET (security_invoker);
ALTER VIEW message_latency RESET (security_invoker);
ALTER VIEW node_participation RESET (security_invoker);

REVOKE ALL ON ALL TABLES IN SCHEMA public
    FROM flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
         flpg_auditor;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public
    FROM flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
         flpg_auditor;
REVOKE USAGE ON SCHEMA public
    FROM flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
         flpg_auditor;

DROP TRIGGER runs_stamp_writer ON runs;
DROP TRIGGER messages_stamp_writer ON messages;
DROP TRIGGER arrays_stamp_writer ON arrays;
DROP TRIGGER run_logs_stamp_writer ON run_logs;
DROP FUNCTION flpg_stamp_writer();
DROP FUNCTION flpg_array_writer(bigint);
DROP FUNCTION flpg_message_writer(bigint);
DROP FUNCTION flpg_claimed_destination(bigint, bigint);
DROP FUNCTION flpg_my_run_id();
DROP FUNCTION flpg_my_node_ids();
