-- When each check last took an agent from each group of agents (country, network,
-- class as `lastmile_domain::agent_choice` groups them): the rotation's memory between
-- groups, read per run (at most one row per group), so a run no longer reads every
-- online agent's `check_agents` row to learn which group waited longest. Written for
-- the groups a run's agents came from.
CREATE TABLE check_groups (
    check_id TEXT NOT NULL,
    country TEXT NOT NULL,
    asn BIGINT NOT NULL,
    class TEXT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (check_id, country, asn, class)
);
