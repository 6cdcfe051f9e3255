-- Run logs: the ServerApp's output and events, line by line.

-- name: run_logs_insert
INSERT INTO run_logs (run_id, stream, line) VALUES (%(run_id)s, %(stream)s, %(line)s);

-- name: run_logs_notify
SELECT pg_notify('flpg_log_' || %(run_id)s, '');

-- name: run_logs_tail
SELECT id, ts, stream, line
FROM run_logs
WHERE run_id = %(run_id)s AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s;
