-- Undoes trust.v4 (migration 0013 down). The tables and columns it covered are dropped
-- by the migration afterwards, and their grants and policies with them.

DROP FUNCTION flpg_checkpoint_durable(bigint);
-- The link's column grant on a table that stays (added after release: a step-by-step
-- downgrade test found it left behind; a down file changes no upgraded schema).
REVOKE UPDATE (max_restarts) ON runs FROM flpg_link;
