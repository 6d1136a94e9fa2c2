-- A run's agents are chosen when it is created (`lastmile_domain::agent_choice`):
-- spread over the selection's countries, networks and classes, in proportion to how
-- many agents each has or equally (`checks.spread`), and least recently used by this
-- check first. `check_agents` remembers when each agent last measured each check: one
-- row per (check, agent) pair, written for the run's chosen agents only.
ALTER TABLE checks ADD COLUMN spread TEXT NOT NULL DEFAULT 'proportional';
CREATE TABLE check_agents (
    check_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    last_run_at BIGINT NOT NULL,
    PRIMARY KEY (check_id, agent_id)
);
-- A run's picks read one group's agents: (country, network, class) as the choice
-- groups them, unknowns as '' and -1.
CREATE INDEX agents_choice_group ON agents
    (COALESCE(country, ''), COALESCE(asn, -1), COALESCE(measured_class, declared_class));
