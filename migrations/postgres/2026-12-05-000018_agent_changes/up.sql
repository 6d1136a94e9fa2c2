-- Controllers keep the agents they serve in memory (token checks, heartbeats, idle
-- leases cost no query). `changed_at` is when anything a controller caches about an
-- agent last changed other than its heartbeat time (enrolment, a heartbeat that changed
-- its class, limits, address or pause, a calibration, a revocation): every controller
-- reads the rows changed since it last looked, every few seconds, by this index.
-- `revoked_at`: the agent's token no longer works (its volunteer revoked it).
ALTER TABLE agents ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN revoked_at BIGINT;
CREATE INDEX agents_changed_at ON agents (changed_at);
