-- Settings of the current database session.

-- name: session_set_lock_timeout
-- A statement that waits longer than `lock_timeout` (e.g. '2000ms') on a lock fails
-- with lock_not_available; the setting lasts for the session.
SELECT set_config('lock_timeout', %(lock_timeout)s, false);
