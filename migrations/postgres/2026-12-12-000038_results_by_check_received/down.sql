DROP INDEX results_check_received;
CREATE INDEX results_check_time ON results (check_id, started_at);
