DROP INDEX assignments_open;
CREATE INDEX assignments_pending ON assignments (state, created_at);
