-- Trust view my_run, version 1 (migration 0014).
-- The run of the connected role: one row for a ServerApp or ClientApp role (its
-- principals row), none for any other role. The row-level security policies of
-- trust.v5 compare a row's run with `(SELECT run_id FROM my_run)`, which the planner
-- inlines and evaluates once per statement (an InitPlan), without a function call.
-- security_invoker: the caller reads principals under its own policy (its own row).
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

CREATE OR REPLACE VIEW my_run WITH (security_invoker = true) AS
SELECT run_id FROM principals WHERE role_name = current_user;

GRANT SELECT ON my_run
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec, flpg_auditor;
