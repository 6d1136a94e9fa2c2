-- A run's assignments are read by run: the run's view (its counts by state, made on
-- every run's creation and every look at a run), the expiry of a past run's pending
-- assignments, re-offers. The only index led by `run_id` was partial (`WHERE agent_id
-- IS NOT NULL`, for one assignment per agent and run), so those reads could not use
-- it for an assignment no agent had leased yet and read the whole table: 3.6-4.2 ms
-- a run's view with 40k assignments in the ingest bench, and `assignments` grows with
-- every run ever made. The same unique index without the predicate keeps the rule
-- (NULLs never conflict in a unique index) and serves every read by run.
DROP INDEX assignments_one_per_agent_and_run;
CREATE UNIQUE INDEX assignments_one_per_agent_and_run ON assignments (run_id, agent_id);
