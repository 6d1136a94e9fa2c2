-- Result verification (controller/src/verification.rs). A result that breaks a rule is
-- kept, marked `flagged`, and left out of aggregates, pay and leaderboard points; each
-- broken rule is one row of result_flags with the numbers that broke it (JSON).
ALTER TABLE results ADD COLUMN flagged BOOLEAN NOT NULL DEFAULT 0;
CREATE TABLE result_flags (
    assignment_id TEXT NOT NULL REFERENCES results(assignment_id),
    rule TEXT NOT NULL,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    volunteer_id TEXT NOT NULL REFERENCES volunteers(id),
    check_id TEXT NOT NULL REFERENCES checks(id),
    run_id TEXT NOT NULL REFERENCES runs(id),
    evidence TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (assignment_id, rule)
);
CREATE INDEX result_flags_created ON result_flags (created_at);
CREATE INDEX result_flags_agent ON result_flags (agent_id);
-- Copies and replays: the same timings and bytes seen before.
CREATE INDEX results_fingerprint ON results (total_us, ttfb_us);
-- Peers: recent results of one check in one ASN and class.
CREATE INDEX results_peers ON results (check_id, asn, connection_class, received_at);
-- Same-address farming: the other results of a run, and a volunteer's agents at one address.
CREATE INDEX results_run ON results (run_id);
CREATE INDEX agents_volunteer_ip ON agents (volunteer_id, ip);
