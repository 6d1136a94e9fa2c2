DROP INDEX assignments_one_per_agent_and_run;
CREATE UNIQUE INDEX assignments_one_per_agent_and_run ON assignments (run_id, agent_id) WHERE agent_id IS NOT NULL;
