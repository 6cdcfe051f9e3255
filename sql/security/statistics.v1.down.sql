-- Undoes statistics.v1 (migration 0016's downgrade).
DROP FUNCTION flpg_refresh_statistics(bigint);
