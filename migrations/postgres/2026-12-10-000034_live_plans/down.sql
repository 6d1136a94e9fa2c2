DROP INDEX assignments_leased_agent;
CREATE INDEX run_agents_agent ON run_agents (agent_id);
DROP INDEX run_agents_live;
ALTER TABLE run_agents DROP COLUMN deadline_at;
