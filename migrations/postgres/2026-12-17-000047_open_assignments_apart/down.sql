ALTER TABLE assignments RESET (fillfactor);
CREATE INDEX assignments_open ON assignments (state, created_at)
    WHERE state IN ('pending', 'leased');
CREATE INDEX assignments_open_check ON assignments (check_id, run_id)
    WHERE state IN ('pending', 'leased');
CREATE INDEX assignments_leased_agent ON assignments (agent_id) WHERE state = 'leased';
DROP TABLE open_assignments;
