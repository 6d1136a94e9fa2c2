-- PostgreSQL indexes only open assignments by state from here on. SQLite keeps its
-- index of every assignment: its planner does not see that `state = 'pending'` implies
-- `state IN ('pending', 'leased')`, so a partial index would leave the lease and the
-- expiry pass scanning the table.
SELECT 1;
