-- Alerts (`lastmile_domain::{alerts, incidents, alert_delivery}`).
--
-- Where an owner's alerts go: a webhook (JSON signed with HMAC-SHA256 under the
-- channel's secret), a Slack-compatible incoming webhook, or an email address.
CREATE TABLE alert_channels (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owners(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    -- The webhook signing secret (kept readable: each delivery is signed with it).
    secret TEXT,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX alert_channels_owner ON alert_channels (owner_id);

-- What breaks a check: each rule is judged every alert pass over its window.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    check_id TEXT NOT NULL REFERENCES checks(id),
    kind TEXT NOT NULL,
    threshold_percent DOUBLE,
    window_s BIGINT NOT NULL,
    min_samples BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX alert_rules_check ON alert_rules (check_id);
CREATE TABLE alert_rule_channels (
    rule_id TEXT NOT NULL REFERENCES alert_rules(id),
    channel_id TEXT NOT NULL REFERENCES alert_channels(id),
    PRIMARY KEY (rule_id, channel_id)
);

-- A rule firing: opened once, updated when what is broken changes, resolved with a
-- message. At most one open incident per rule.
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    check_id TEXT NOT NULL REFERENCES checks(id),
    rule_id TEXT NOT NULL REFERENCES alert_rules(id),
    opened_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    resolved_at BIGINT,
    summary TEXT NOT NULL,
    resolution TEXT,
    -- What is broken, for updates: an incident is updated when it changes.
    fingerprint TEXT NOT NULL,
    -- The evidence (JSON): figures, failing segments, breached objectives.
    details TEXT NOT NULL
);
CREATE UNIQUE INDEX incidents_one_open_per_rule ON incidents (rule_id) WHERE resolved_at IS NULL;
CREATE INDEX incidents_check ON incidents (check_id, opened_at);

-- The outbox: one row per (incident event, channel), written in the transaction that
-- changes the incident; sent and retried with backoff by the delivery pass. `body` is
-- exactly what is sent each time (so a retry carries the same delivery id and
-- signature). `next_attempt_at` is NULL once delivered or given up.
CREATE TABLE alert_deliveries (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents(id),
    channel_id TEXT NOT NULL REFERENCES alert_channels(id),
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT,
    delivered_at BIGINT,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX alert_deliveries_channel ON alert_deliveries (channel_id, created_at);
