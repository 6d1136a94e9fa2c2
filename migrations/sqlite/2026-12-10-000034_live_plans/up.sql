-- A lease finds the agent's live plans and leases by index, not by its history (see
-- the PostgreSQL migration). SQLite adds a NOT NULL column only with a default: 0,
-- replaced by each plan's run deadline at once.
ALTER TABLE run_agents ADD COLUMN deadline_at BIGINT NOT NULL DEFAULT 0;
UPDATE run_agents SET deadline_at = (SELECT r.deadline_at FROM runs r WHERE r.id = run_agents.run_id);
CREATE INDEX run_agents_live ON run_agents (agent_id, deadline_at);
DROP INDEX run_agents_agent;
CREATE INDEX assignments_leased_agent ON assignments (agent_id) WHERE state = 'leased';
