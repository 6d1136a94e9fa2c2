-- Path traces (issue 16): when an incident opens, the agents that saw it trace the path
-- to the check's target. An agent says in its heartbeat whether it can.
ALTER TABLE agents ADD COLUMN path_trace BOOLEAN NOT NULL DEFAULT 0;

-- One trace asked of one agent: pending until leased, leased until reported (`done`) or
-- past `expires_at` (`expired`). `hops` is the report's JSON, as the agent sent it.
CREATE TABLE path_traces (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents(id),
    check_id TEXT NOT NULL REFERENCES checks(id),
    agent_id TEXT NOT NULL REFERENCES agents(id),
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    leased_at BIGINT,
    expires_at BIGINT NOT NULL,
    finished_at BIGINT,
    target_addr TEXT,
    reached BOOLEAN,
    hops TEXT,
    error_kind TEXT,
    error_message TEXT
);
CREATE INDEX path_traces_incident ON path_traces (incident_id);
-- The lease looks up an agent's pending traces; the work feed new ones.
CREATE INDEX path_traces_pending ON path_traces (agent_id) WHERE state = 'pending';
CREATE INDEX path_traces_created ON path_traces (created_at) WHERE state = 'pending';
CREATE INDEX path_traces_open ON path_traces (expires_at) WHERE state IN ('pending', 'leased');
