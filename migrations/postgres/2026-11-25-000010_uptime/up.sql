-- Time online per agent and UTC day, from heartbeats: each heartbeat that follows the
-- previous one within the online window adds the gap. Leaderboard points come from it.
CREATE TABLE agent_uptime (
    agent_id TEXT NOT NULL REFERENCES agents(id),
    day BIGINT NOT NULL,
    seconds BIGINT NOT NULL,
    PRIMARY KEY (agent_id, day)
);
