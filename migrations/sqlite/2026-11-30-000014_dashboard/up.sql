-- Dashboard: named API tokens an owner creates and revokes (stored hashed; the token
-- made by `owner create` stays in owners.token_hash and keeps working), paused checks,
-- and how a site's ownership was proven (`file` or `dns`).
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owners(id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_owner ON api_tokens (owner_id);

ALTER TABLE checks ADD COLUMN paused_at BIGINT;
ALTER TABLE sites ADD COLUMN verified_by TEXT;
