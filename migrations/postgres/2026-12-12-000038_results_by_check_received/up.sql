-- A check's results are read by when they arrived, never by when the agent says it
-- started (its own clock): the report page's last hour (`recent.rs`), a live follower's
-- poll (`live.rs`, in arrival order) and the alert rules' window (`incidents.rs`) all
-- filter on (check_id, received_at). With (check_id, started_at) SQLite read every
-- retained result of the check and filtered them; the index is replaced, not added to,
-- so that writing a result costs the same.
DROP INDEX results_check_time;
CREATE INDEX results_check_received ON results (check_id, received_at);
