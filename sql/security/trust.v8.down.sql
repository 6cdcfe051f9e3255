-- Undoes trust.v8 (migration 0018's downgrade): the identity lookups are STABLE again.

ALTER FUNCTION flpg_my_node_ids() STABLE;
ALTER FUNCTION flpg_my_run_id() STABLE;
