-- Undoes trust.v4 (migration 0013 down). The tables and columns it covered are dropped
-- by the migration afterwards, and their grants and policies with them.

DROP FUNCTION flpg_checkpoint_durable(bigint);
