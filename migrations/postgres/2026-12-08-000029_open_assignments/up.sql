-- Assignments are looked up by state only while open (pending or leased): by the
-- lease, the offer of new work, the expiry pass, held credit and the metrics. Indexing
-- only open ones keeps the index the size of the work in flight instead of every
-- assignment ever made, and closing an assignment (its result stored, or its lease
-- expired) no longer writes an index entry for it: the accept path closes one per
-- result, an update PostgreSQL cannot make in place (`state` is indexed), so each
-- index of the table gets a new entry; this was one of three.
DROP INDEX assignments_pending;
CREATE INDEX assignments_open ON assignments (state, created_at)
    WHERE state IN ('pending', 'leased');
