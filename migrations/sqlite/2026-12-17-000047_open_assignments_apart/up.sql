-- Open work gets a table of its own beside `assignments`, with the indexes of open work
-- (see the PostgreSQL migration): one schema for both backends. SQLite has no HOT
-- updates to gain, but its index of every assignment by state, which grew with the
-- history, goes. Its planner uses a partial index only for a query that names the
-- index's predicate: each names one state, written as a literal.
CREATE TABLE open_assignments (
    assignment_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    check_id TEXT NOT NULL,
    state TEXT NOT NULL,
    agent_id TEXT,
    created_at BIGINT NOT NULL,
    lease_expires_at BIGINT
);
INSERT INTO open_assignments (assignment_id, run_id, check_id, state, agent_id, created_at, lease_expires_at)
    SELECT id, run_id, check_id, state, agent_id, created_at, lease_expires_at
    FROM assignments WHERE state IN ('pending', 'leased');
CREATE INDEX open_assignments_pending ON open_assignments (created_at) WHERE state = 'pending';
CREATE INDEX open_assignments_leased ON open_assignments (lease_expires_at) WHERE state = 'leased';
CREATE INDEX open_assignments_leased_agent ON open_assignments (agent_id, lease_expires_at) WHERE state = 'leased';
CREATE INDEX open_assignments_check ON open_assignments (check_id, run_id);
CREATE INDEX open_assignments_pending_run ON open_assignments (run_id, created_at) WHERE state = 'pending';
DROP INDEX assignments_pending;
DROP INDEX assignments_open_check;
DROP INDEX assignments_leased_agent;
