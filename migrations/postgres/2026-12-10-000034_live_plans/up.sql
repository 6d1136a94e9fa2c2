-- A lease finds the agent's live plans and leases by index, not by its history.
--
-- `lease_one` started from every run the agent was ever planned into (`run_agents`
-- by agent: ~26k rows at 90 days of a busy agent's history, kept until its results
-- age out) or, planned generically, from every pending assignment of the network
-- probing each one's plan: 1.9 ms and 8 ms a lease with 750 plans an agent, growing
-- with both. A plan now carries its run's deadline, so the agent's live plans are an
-- index range: 0.6 ms, the size of what the agent is planned into now.
ALTER TABLE run_agents ADD COLUMN deadline_at BIGINT;
UPDATE run_agents ra SET deadline_at = r.deadline_at FROM runs r WHERE r.id = ra.run_id;
ALTER TABLE run_agents ALTER COLUMN deadline_at SET NOT NULL;
CREATE INDEX run_agents_live ON run_agents (agent_id, deadline_at);
DROP INDEX run_agents_agent;
-- The agent's leases in flight (how many more it may take): with the state a parameter
-- no plan could use the open-assignments index (its predicate must be proven), and
-- PostgreSQL's generic plan read every assignment (82 ms with 1.5M). Now by agent.
CREATE INDEX assignments_leased_agent ON assignments (agent_id) WHERE state = 'leased';
