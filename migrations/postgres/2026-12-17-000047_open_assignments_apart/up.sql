-- Open work (pending and leased assignments) gets a table of its own beside
-- `assignments`, and the indexes of open work move there. Closing an assignment (its
-- result stored, its lease run out) set `state`, which every partial index of open
-- work named in its predicate, so PostgreSQL could never make it a HOT update: each
-- close wrote a new row version and an entry in each of the table's indexes, 23 µs of
-- PostgreSQL's ~50 µs a result in `bench ingest --in-process` (`pg_stat_statements`).
-- Now `assignments` is indexed only by key and by (run, agent), which no close
-- changes: the close is a HOT update there and a delete here, from a table the size of
-- the work in flight. A row here is written only by the transaction that holds its
-- assignment's row lock (or creates it), so the two never disagree.
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
-- Pending work by offer time (offers, the offer window) and by run (the lease: a live
-- run's pending slots, not its leased ones); leases by deadline (the expiry pass) and
-- by agent (its leases in flight); open work by check (credit held at a run's
-- admission, a run settled).
CREATE INDEX open_assignments_pending ON open_assignments (created_at) WHERE state = 'pending';
CREATE INDEX open_assignments_leased ON open_assignments (lease_expires_at) WHERE state = 'leased';
CREATE INDEX open_assignments_leased_agent ON open_assignments (agent_id, lease_expires_at) WHERE state = 'leased';
CREATE INDEX open_assignments_check ON open_assignments (check_id, run_id);
CREATE INDEX open_assignments_pending_run ON open_assignments (run_id, created_at) WHERE state = 'pending';
DROP INDEX assignments_open;
DROP INDEX assignments_open_check;
DROP INDEX assignments_leased_agent;
-- Room on each page for the next version of its rows, which a HOT update must put on
-- the same page: each assignment is written three times (created, leased, closed).
ALTER TABLE assignments SET (fillfactor = 80);
