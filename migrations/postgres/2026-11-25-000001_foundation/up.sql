-- Foundation schema. Times are BIGINT microseconds since the Unix epoch and ids are
-- UUID text, so that PostgreSQL and SQLite share one portable schema (see ARCHITECTURE.md).

CREATE TABLE owners (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE volunteers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    enrol_key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    volunteer_id TEXT NOT NULL REFERENCES volunteers(id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    declared_class TEXT NOT NULL,
    version TEXT NOT NULL,
    max_concurrent INTEGER NOT NULL,
    ip TEXT NOT NULL,
    country TEXT,
    region TEXT,
    city TEXT,
    asn BIGINT,
    as_org TEXT,
    enrolled_at BIGINT NOT NULL,
    last_heartbeat_at BIGINT
);
CREATE INDEX agents_last_heartbeat ON agents (last_heartbeat_at);

CREATE TABLE sites (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owners(id),
    origin TEXT NOT NULL,
    verification_token TEXT NOT NULL,
    verified_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (owner_id, origin)
);

CREATE TABLE checks (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owners(id),
    site_id TEXT NOT NULL REFERENCES sites(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    expected_status TEXT NOT NULL,
    max_bytes BIGINT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    countries TEXT NOT NULL,
    asns TEXT NOT NULL,
    connection_classes TEXT NOT NULL,
    agents_per_run INTEGER NOT NULL,
    interval_s BIGINT,
    next_run_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX checks_next_run ON checks (next_run_at);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    check_id TEXT NOT NULL REFERENCES checks(id),
    created_at BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    eligible_agents INTEGER NOT NULL,
    requested INTEGER NOT NULL
);
CREATE INDEX runs_check ON runs (check_id, created_at);

-- The agents that were eligible when a run was created: only they may lease its assignments.
CREATE TABLE run_agents (
    run_id TEXT NOT NULL REFERENCES runs(id),
    agent_id TEXT NOT NULL REFERENCES agents(id),
    PRIMARY KEY (run_id, agent_id)
);
CREATE INDEX run_agents_agent ON run_agents (agent_id);

CREATE TABLE assignments (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    check_id TEXT NOT NULL REFERENCES checks(id),
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    agent_id TEXT REFERENCES agents(id),
    created_at BIGINT NOT NULL,
    leased_at BIGINT,
    lease_expires_at BIGINT
);
CREATE INDEX assignments_pending ON assignments (state, created_at);
-- One agent measures a run at most once, whatever the attempt.
CREATE UNIQUE INDEX assignments_one_per_agent_and_run ON assignments (run_id, agent_id) WHERE agent_id IS NOT NULL;

CREATE TABLE results (
    assignment_id TEXT PRIMARY KEY REFERENCES assignments(id),
    run_id TEXT NOT NULL REFERENCES runs(id),
    check_id TEXT NOT NULL REFERENCES checks(id),
    agent_id TEXT NOT NULL REFERENCES agents(id),
    received_at BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    late BOOLEAN NOT NULL,
    status INTEGER,
    bytes BIGINT NOT NULL,
    error_kind TEXT,
    error_message TEXT,
    dns_us BIGINT NOT NULL,
    connect_us BIGINT NOT NULL,
    tls_us BIGINT NOT NULL,
    ttfb_us BIGINT NOT NULL,
    transfer_us BIGINT NOT NULL,
    total_us BIGINT NOT NULL,
    country TEXT NOT NULL,
    region TEXT NOT NULL,
    asn BIGINT NOT NULL,
    connection_class TEXT NOT NULL
);
CREATE INDEX results_check_time ON results (check_id, started_at);

-- One row per (check, hour, country, region, ASN, class): success/failure counts plus one
-- serialized HdrHistogram (V2) per phase over the successful samples.
CREATE TABLE aggregates (
    check_id TEXT NOT NULL REFERENCES checks(id),
    bucket_start BIGINT NOT NULL,
    country TEXT NOT NULL,
    region TEXT NOT NULL,
    asn BIGINT NOT NULL,
    connection_class TEXT NOT NULL,
    successes BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    dns_hist BYTEA NOT NULL,
    connect_hist BYTEA NOT NULL,
    tls_hist BYTEA NOT NULL,
    ttfb_hist BYTEA NOT NULL,
    transfer_hist BYTEA NOT NULL,
    total_hist BYTEA NOT NULL,
    PRIMARY KEY (check_id, bucket_start, country, region, asn, connection_class)
);
