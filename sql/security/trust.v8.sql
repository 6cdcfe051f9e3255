-- Trust, version 8 (migration 0018): a connection looks its identity up once per
-- statement it plans, not at every execution.
--
-- Every policy of nodes, ClientApps and ServerApps compares a column with the
-- caller's node ids or run, `(SELECT flpg_my_node_ids())` or `(SELECT
-- flpg_my_run_id())`. As STABLE functions they ran as InitPlans at each execution: a
-- claim ran ten of them, a reply write more than a dozen, each one an SPI query on
-- principal_nodes or principals (benchmarks/RESULTS.md, "Identity folded into the
-- plan"). Declared IMMUTABLE, the planner evaluates them while planning and keeps the
-- result in the plan as a constant; the hot connections (node workers, ClientApp
-- processes, ServerApps) plan each statement once (force_generic_plan), so their
-- identity is looked up once per statement per connection.
--
-- Why a constant is safe here:
--  * a role's mapping never changes while it can log in: its principals and
--    principal_nodes rows are written in the transaction that creates the role
--    (flpg_create_run_role, enrol_node), and removed only after the role lost LOGIN
--    and its sessions were terminated (revoke, flpg_run_role_drop);
--  * a plan that applies row-level security is bound to the role that planned it:
--    PostgreSQL plans again when the statement runs as another role (SET ROLE), or
--    with row_security changed, so a constant never serves another role;
--  * the functions read only the caller's own rows (current_user), as before.
-- The one statement that calls flpg_my_node_ids() directly (nodes_attach) reads
-- nodes, a table with row-level security, so its plan is bound to the role as well.
-- Never edit a released version: a change is a new file and a migration naming it.

ALTER FUNCTION flpg_my_node_ids() IMMUTABLE;
ALTER FUNCTION flpg_my_run_id() IMMUTABLE;
