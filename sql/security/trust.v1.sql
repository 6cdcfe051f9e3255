-- Trust, version 1 (migration 0007): who may touch which rows.
-- Grants say which statements and columns each group role may use; row-level
-- security policies say which rows. Identity comes from `current_user` only,
-- looked up in `principals` / `principal_nodes` (written by admin alone).
-- The tables' owner (admin, who migrates) bypasses row-level security.
-- No role but admin may DELETE, except two transient-payload cases that existing
-- queries need: the link collects array chunks nothing live needs (arrays_collect;
-- the `arrays` row, the audit trail, stays), and a run's ServerApp replaces its own
-- checkpoint's array links and arrays (checkpoint_arrays_replace_old).
-- The audit views are made security_invoker, so they show each role only what it
-- may read; a new version of a view must restate that option.
-- Never edit a released version: a change is a new file and a migration naming it.

-- Identity lookups -----------------------------------------------------------------

-- The node ids the connected role answers for (empty for every other role).
CREATE FUNCTION flpg_my_node_ids() RETURNS bigint[]
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, public
AS $$
    SELECT coalesce(array_agg(node_id ORDER BY node_id), '{}')
    FROM public.principal_nodes WHERE role_name = current_user
$$;

-- The run the connected role is bound to (ServerApp and ClientApp roles), else NULL.
CREATE FUNCTION flpg_my_run_id() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, public
AS $$
    SELECT run_id FROM public.principals WHERE role_name = current_user
$$;

-- SECURITY DEFINER: a policy on messages cannot query messages (PostgreSQL refuses
-- the recursion), and a reply's instruction is invisible to a ClientApp role of
-- another node anyway. Returns the destination of instruction `instruction` of run
-- `run` while it is claimed, else NULL. STABLE: it sees the instruction as the
-- statement found it, so messages_insert_replies, which completes the instruction
-- and inserts its reply in one statement, passes.
CREATE FUNCTION flpg_claimed_destination(instruction bigint, run bigint) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT dst_node_id FROM public.messages
    WHERE id = instruction AND run_id = run AND reply_to IS NULL AND state = 'claimed'
$$;

-- SECURITY DEFINER, VOLATILE: who wrote message `message`. A message and its array
-- links are inserted by one statement (messages_insert_batch, messages_insert_replies);
-- a policy's subquery would not see the new message, a VOLATILE function does.
CREATE FUNCTION flpg_message_writer(message bigint) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT created_by FROM public.messages WHERE id = message
$$;

-- SECURITY DEFINER, VOLATILE: who wrote array `arr` (arrays_insert_small inserts an
-- array and its chunk in one statement).
CREATE FUNCTION flpg_array_writer(arr bigint) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT created_by FROM public.arrays WHERE id = arr
$$;

-- Ownership from the connection: the writer column named by the trigger's argument
-- is set to current_user, whatever the statement gave.
CREATE FUNCTION flpg_stamp_writer() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
BEGIN
    NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0], current_user));
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_stamp_writer BEFORE INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION flpg_stamp_writer('submitted_by');
CREATE TRIGGER messages_stamp_writer BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION flpg_stamp_writer('created_by');
CREATE TRIGGER arrays_stamp_writer BEFORE INSERT ON arrays
    FOR EACH ROW EXECUTE FUNCTION flpg_stamp_writer('created_by');
CREATE TRIGGER run_logs_stamp_writer BEFORE INSERT ON run_logs
    FOR EACH ROW EXECUTE FUNCTION flpg_stamp_writer('written_by');

REVOKE ALL ON FUNCTION flpg_my_node_ids(), flpg_my_run_id(),
    flpg_claimed_destination(bigint, bigint), flpg_message_writer(bigint),
    flpg_array_writer(bigint), flpg_stamp_writer() FROM PUBLIC;
-- (A trigger's function needs no EXECUTE grant: it is checked when the trigger is made.)
GRANT EXECUTE ON FUNCTION flpg_my_node_ids(), flpg_my_run_id()
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;
GRANT EXECUTE ON FUNCTION flpg_claimed_destination(bigint, bigint)
    TO flpg_node, flpg_clientapp;
GRANT EXECUTE ON FUNCTION flpg_message_writer(bigint), flpg_array_writer(bigint)
    TO flpg_node, flpg_clientapp, flpg_serverapp, flpg_user;

-- Grants ---------------------------------------------------------------------------

-- (PostgreSQL 15 and later already withhold CREATE on public from PUBLIC.)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;
-- Every service checks the schema revision before it starts.
GRANT SELECT ON alembic_version
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;

GRANT SELECT ON principals, principal_nodes
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;

GRANT SELECT ON nodes TO flpg_node, flpg_user, flpg_link, flpg_auditor;
GRANT SELECT (id, name, status) ON nodes TO flpg_serverapp;
GRANT UPDATE (last_seen_at, status) ON nodes TO flpg_node;
GRANT UPDATE (status) ON nodes TO flpg_link;

GRANT SELECT ON apps TO flpg_node, flpg_serverapp, flpg_clientapp, flpg_exec;
GRANT INSERT ON apps TO flpg_user;
-- A user stores bundles but reads none back: apps_insert's ON CONFLICT makes the new
-- row pass the SELECT policy, which cannot yet name the run that will use it.
GRANT SELECT (hash, name, size, created_at) ON apps TO flpg_user, flpg_link, flpg_auditor;

GRANT SELECT ON runs
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;
GRANT INSERT (app_hash, app_name, run_config, priority, max_restarts) ON runs TO flpg_user;
GRANT UPDATE (status, reason, finished_at, stop_requested_at, attempt, exec_id, claimed_at,
              serverapp_pid, heartbeat_at) ON runs TO flpg_user, flpg_serverapp, flpg_link;
GRANT UPDATE (status, reason, started_at, finished_at, stop_requested_at, attempt, exec_id,
              claimed_at, serverapp_pid, heartbeat_at) ON runs TO flpg_exec;

GRANT SELECT ON run_nodes
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_auditor;
GRANT INSERT (run_id, node_id) ON run_nodes TO flpg_user;
GRANT UPDATE (last_claimed_at) ON run_nodes TO flpg_node, flpg_clientapp;

GRANT SELECT ON messages
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec,
       flpg_auditor;
-- Instructions: a ServerApp (ids from the sequence, like messages_insert_batch).
GRANT INSERT (id, run_id, dst_node_id, group_id, message_type, ttl_seconds, deadline,
              metrics, configs, send_key) ON messages TO flpg_serverapp;
GRANT USAGE ON SEQUENCE messages_id_seq TO flpg_serverapp;
-- Replies: a node or ClientApp; error replies: the link.
GRANT INSERT (run_id, src_node_id, reply_to, group_id, message_type, ttl_seconds, deadline,
              metrics, configs, error_code, error_reason)
    ON messages TO flpg_node, flpg_clientapp, flpg_link;
GRANT UPDATE (state, claimed_by, claimed_at, lease_until, attempts, finished_at)
    ON messages TO flpg_node, flpg_clientapp, flpg_link;
GRANT UPDATE (state, finished_at, lease_until, rejected_reason) ON messages TO flpg_serverapp;
GRANT UPDATE (state, finished_at, lease_until) ON messages TO flpg_exec;
-- A user stopping its own run cancels that run's undelivered messages.
GRANT UPDATE (state, finished_at, lease_until) ON messages TO flpg_user;

GRANT SELECT ON message_arrays
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_auditor;
GRANT INSERT ON message_arrays TO flpg_node, flpg_serverapp, flpg_clientapp;

GRANT SELECT ON arrays
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_auditor;
GRANT INSERT (id, run_id, dtype, shape, nbytes, chunk_size, n_chunks, digest)
    ON arrays TO flpg_node, flpg_serverapp, flpg_clientapp;
GRANT USAGE ON SEQUENCE arrays_id_seq TO flpg_node, flpg_serverapp, flpg_clientapp;
GRANT DELETE ON arrays TO flpg_serverapp;
GRANT UPDATE (collected_at) ON arrays TO flpg_link;

-- Payload bytes: never to the link or the auditor (column grants leave out `data`).
GRANT SELECT ON array_chunks TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp;
GRANT INSERT ON array_chunks TO flpg_node, flpg_serverapp, flpg_clientapp;
GRANT SELECT (array_id, seq) ON array_chunks TO flpg_link, flpg_auditor;
GRANT DELETE ON array_chunks TO flpg_link;

GRANT SELECT ON checkpoints TO flpg_user, flpg_serverapp, flpg_exec, flpg_auditor;
GRANT INSERT (run_id, round, attempt, metrics), UPDATE (round, attempt, metrics, saved_at)
    ON checkpoints TO flpg_serverapp;
GRANT SELECT ON checkpoint_arrays
    TO flpg_user, flpg_serverapp, flpg_link, flpg_auditor;
GRANT INSERT, DELETE ON checkpoint_arrays TO flpg_serverapp;

GRANT SELECT ON round_metrics TO flpg_user, flpg_serverapp, flpg_auditor;
GRANT INSERT (run_id, round, phase, metrics, num_replies, num_failures),
    UPDATE (metrics, num_replies, num_failures, recorded_at) ON round_metrics TO flpg_serverapp;

-- Logs are append-only: INSERT, never UPDATE or DELETE.
GRANT SELECT ON run_logs TO flpg_user, flpg_serverapp, flpg_auditor;
GRANT INSERT (run_id, stream, line) ON run_logs TO flpg_user, flpg_serverapp, flpg_exec;

GRANT SELECT ON run_history, round_history TO flpg_user, flpg_auditor;
GRANT SELECT ON message_latency, node_participation TO flpg_auditor;
ALTER VIEW run_history SET (security_invoker = true);
ALTER VIEW round_history SET (security_invoker = true);
ALTER VIEW message_latency SET (security_invoker = true);
ALTER VIEW node_participation SET (security_invoker = true);

-- Row-level security ---------------------------------------------------------------

ALTER TABLE principals ENABLE ROW LEVEL SECURITY;
ALTER TABLE principal_nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE apps ENABLE ROW LEVEL SECURITY;
ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE message_arrays ENABLE ROW LEVEL SECURITY;
ALTER TABLE arrays ENABLE ROW LEVEL SECURITY;
ALTER TABLE array_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE checkpoint_arrays ENABLE ROW LEVEL SECURITY;
ALTER TABLE round_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_logs ENABLE ROW LEVEL SECURITY;

-- The sweeps (link), launches (exec) and audits (auditor) span every run: they read
-- every row their grants allow (never payload bytes: see the column grants above).
CREATE POLICY every_row ON nodes FOR SELECT TO flpg_link, flpg_auditor USING (true);
CREATE POLICY every_row ON apps FOR SELECT TO flpg_link, flpg_exec, flpg_auditor USING (true);
CREATE POLICY every_row ON runs FOR SELECT TO flpg_link, flpg_exec, flpg_auditor USING (true);
CREATE POLICY every_row ON run_nodes FOR SELECT TO flpg_link, flpg_auditor USING (true);
CREATE POLICY every_row ON messages FOR SELECT TO flpg_link, flpg_exec, flpg_auditor
    USING (true);
CREATE POLICY every_row ON message_arrays FOR SELECT TO flpg_link, flpg_auditor USING (true);
CREATE POLICY every_row ON arrays FOR SELECT TO flpg_link, flpg_auditor USING (true);
CREATE POLICY every_row ON array_chunks FOR SELECT TO flpg_link, flpg_auditor USING (true);
CREATE POLICY every_row ON checkpoints FOR SELECT TO flpg_exec, flpg_auditor USING (true);
CREATE POLICY every_row ON checkpoint_arrays FOR SELECT TO flpg_link, flpg_auditor
    USING (true);
CREATE POLICY every_row ON round_metrics FOR SELECT TO flpg_auditor USING (true);
CREATE POLICY every_row ON run_logs FOR SELECT TO flpg_auditor USING (true);
CREATE POLICY every_row ON principals FOR SELECT TO flpg_auditor USING (true);
CREATE POLICY every_row ON principal_nodes FOR SELECT TO flpg_auditor USING (true);

-- Link sweeps: leases, TTLs (with an error reply), silent nodes and runs, runs never
-- launched, payload collection.
CREATE POLICY link_sweeps ON nodes FOR UPDATE TO flpg_link USING (true);
CREATE POLICY link_sweeps ON runs FOR UPDATE TO flpg_link USING (true);
CREATE POLICY link_sweeps ON messages FOR UPDATE TO flpg_link USING (true);
CREATE POLICY link_error_replies ON messages FOR INSERT TO flpg_link
    WITH CHECK (reply_to IS NOT NULL AND error_code IS NOT NULL);
CREATE POLICY link_sweeps ON arrays FOR UPDATE TO flpg_link USING (true);
CREATE POLICY link_collects ON array_chunks FOR DELETE TO flpg_link USING (true);

-- Exec: claims, launches and ends runs (cancelling their undelivered messages),
-- writes their logs.
CREATE POLICY exec_launches ON runs FOR UPDATE TO flpg_exec USING (true);
CREATE POLICY exec_cancels ON messages FOR UPDATE TO flpg_exec USING (true);
CREATE POLICY exec_logs ON run_logs FOR INSERT TO flpg_exec WITH CHECK (true);

-- Each role reads its own mapping rows.
CREATE POLICY own_rows ON principals FOR SELECT USING (role_name = current_user);
CREATE POLICY own_rows ON principal_nodes FOR SELECT USING (role_name = current_user);

-- Node: its own node ids, the instructions addressed to them, the replies it wrote
-- for them (only to an instruction of theirs it holds claimed), their arrays.
CREATE POLICY node_own ON nodes TO flpg_node USING (id = ANY(flpg_my_node_ids()));
CREATE POLICY node_selected ON run_nodes TO flpg_node
    USING (node_id = ANY(flpg_my_node_ids()));
CREATE POLICY node_runs ON runs FOR SELECT TO flpg_node
    USING (EXISTS (SELECT 1 FROM run_nodes rn WHERE rn.run_id = runs.id));
CREATE POLICY node_messages ON messages FOR SELECT TO flpg_node
    USING (dst_node_id = ANY(flpg_my_node_ids()) OR src_node_id = ANY(flpg_my_node_ids()));
CREATE POLICY node_claims ON messages FOR UPDATE TO flpg_node
    USING (reply_to IS NULL AND dst_node_id = ANY(flpg_my_node_ids()))
    WITH CHECK (reply_to IS NULL AND dst_node_id = ANY(flpg_my_node_ids())
                AND state IN ('queued', 'claimed', 'done'));
CREATE POLICY node_replies ON messages FOR INSERT TO flpg_node
    WITH CHECK (reply_to IS NOT NULL AND src_node_id = ANY(flpg_my_node_ids())
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));

-- ClientApp: like a node, within its run only.
CREATE POLICY clientapp_run ON runs FOR SELECT TO flpg_clientapp
    USING (id = flpg_my_run_id());
CREATE POLICY clientapp_selected ON run_nodes TO flpg_clientapp
    USING (run_id = flpg_my_run_id() AND node_id = ANY(flpg_my_node_ids()));
CREATE POLICY clientapp_messages ON messages FOR SELECT TO flpg_clientapp
    USING (run_id = flpg_my_run_id()
           AND (dst_node_id = ANY(flpg_my_node_ids()) OR src_node_id = ANY(flpg_my_node_ids())));
CREATE POLICY clientapp_claims ON messages FOR UPDATE TO flpg_clientapp
    USING (run_id = flpg_my_run_id() AND reply_to IS NULL
           AND dst_node_id = ANY(flpg_my_node_ids()))
    WITH CHECK (run_id = flpg_my_run_id() AND reply_to IS NULL
                AND dst_node_id = ANY(flpg_my_node_ids())
                AND state IN ('queued', 'claimed', 'done'));
CREATE POLICY clientapp_replies ON messages FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = flpg_my_run_id() AND reply_to IS NOT NULL
                AND src_node_id = ANY(flpg_my_node_ids())
                AND src_node_id = flpg_claimed_destination(reply_to, run_id));

-- Nodes and ClientApps read the arrays of the messages they see and those they
-- wrote; they write arrays only for a run that selected them. A role links to its
-- own messages only arrays it wrote. The writer functions (not subqueries) also let
-- a statement that inserts a message or array and then its links or chunks see its
-- own new rows (a RETURNING clause checks the new row against the SELECT policy).
CREATE POLICY carried ON message_arrays FOR SELECT
    TO flpg_node, flpg_clientapp, flpg_serverapp
    USING (EXISTS (SELECT 1 FROM messages m WHERE m.id = message_arrays.message_id)
           OR flpg_message_writer(message_id) = current_user);
CREATE POLICY own_messages ON message_arrays FOR INSERT
    TO flpg_node, flpg_clientapp, flpg_serverapp
    WITH CHECK (flpg_message_writer(message_id) = current_user
                AND flpg_array_writer(array_id) = current_user);
CREATE POLICY carried_or_own ON arrays FOR SELECT TO flpg_node, flpg_clientapp
    USING (created_by = current_user
           OR EXISTS (SELECT 1 FROM message_arrays ma WHERE ma.array_id = arrays.id));
CREATE POLICY node_writes ON arrays FOR INSERT TO flpg_node
    WITH CHECK (EXISTS (SELECT 1 FROM run_nodes rn WHERE rn.run_id = arrays.run_id));
CREATE POLICY clientapp_writes ON arrays FOR INSERT TO flpg_clientapp
    WITH CHECK (run_id = flpg_my_run_id());
CREATE POLICY readable_array ON array_chunks FOR SELECT
    TO flpg_node, flpg_clientapp, flpg_serverapp, flpg_user
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks.array_id)
           OR flpg_array_writer(array_id) = current_user);
CREATE POLICY own_array ON array_chunks FOR INSERT
    TO flpg_node, flpg_clientapp, flpg_serverapp
    WITH CHECK (flpg_array_writer(array_id) = current_user);

-- App bundles: those of the runs a role can see.
CREATE POLICY of_visible_runs ON apps FOR SELECT TO flpg_node, flpg_clientapp, flpg_serverapp
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.app_hash = apps.hash));
CREATE POLICY user_stores ON apps TO flpg_user USING (true);

-- User: the runs it submitted and everything of theirs; the node list.
CREATE POLICY user_nodes ON nodes FOR SELECT TO flpg_user USING (true);
CREATE POLICY user_own ON runs TO flpg_user USING (submitted_by = current_user);
CREATE POLICY user_own ON run_nodes TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = run_nodes.run_id));
CREATE POLICY user_own ON messages FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = messages.run_id));
CREATE POLICY user_stop ON messages FOR UPDATE TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = messages.run_id));
CREATE POLICY user_own ON message_arrays FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM messages m WHERE m.id = message_arrays.message_id));
CREATE POLICY user_own ON arrays FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = arrays.run_id));
CREATE POLICY user_own ON checkpoints FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = checkpoints.run_id));
CREATE POLICY user_own ON checkpoint_arrays FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = checkpoint_arrays.run_id));
CREATE POLICY user_own ON round_metrics FOR SELECT TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = round_metrics.run_id));
CREATE POLICY user_own ON run_logs TO flpg_user
    USING (EXISTS (SELECT 1 FROM runs r WHERE r.id = run_logs.run_id));

-- A run's ServerApp: that run only. It sends instructions, never replies.
CREATE POLICY serverapp_nodes ON nodes FOR SELECT TO flpg_serverapp USING (true);
CREATE POLICY serverapp_run ON runs TO flpg_serverapp USING (id = flpg_my_run_id());
CREATE POLICY serverapp_run ON run_nodes FOR SELECT TO flpg_serverapp
    USING (run_id = flpg_my_run_id());
CREATE POLICY serverapp_run ON messages TO flpg_serverapp
    USING (run_id = flpg_my_run_id());
CREATE POLICY serverapp_sends ON messages AS RESTRICTIVE FOR INSERT TO flpg_serverapp
    WITH CHECK (reply_to IS NULL);
CREATE POLICY serverapp_run ON arrays TO flpg_serverapp USING (run_id = flpg_my_run_id());
CREATE POLICY serverapp_run ON checkpoints TO flpg_serverapp USING (run_id = flpg_my_run_id());
CREATE POLICY serverapp_run ON checkpoint_arrays TO flpg_serverapp
    USING (run_id = flpg_my_run_id());
CREATE POLICY serverapp_run ON round_metrics TO flpg_serverapp
    USING (run_id = flpg_my_run_id());
CREATE POLICY serverapp_run ON run_logs TO flpg_serverapp USING (run_id = flpg_my_run_id());
