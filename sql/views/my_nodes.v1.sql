-- Trust view my_nodes, version 1 (migration 0014).
-- The node ids the connected role answers for, as one array (NULL when it answers for
-- none): a node role's enrolled ids, a ClientApp role's nodes. Policies compare with
-- `= ANY((SELECT node_ids FROM my_nodes)::bigint[])`, evaluated once per statement
-- (the cast makes ANY take an array, not a subquery's rows).
-- security_invoker: the caller reads principal_nodes under its own policy.
-- Never edit a released version: a change is a new file (.v2.sql) and a
-- migration that names it (its downgrade names the version before).

CREATE OR REPLACE VIEW my_nodes WITH (security_invoker = true) AS
SELECT array_agg(node_id ORDER BY node_id) AS node_ids
FROM principal_nodes WHERE role_name = current_user;

GRANT SELECT ON my_nodes
    TO flpg_node, flpg_user, flpg_serverapp, flpg_clientapp, flpg_link, flpg_exec, flpg_auditor;
