-- Dashboard sign-in: a login is an email and an argon2 password hash for exactly one
-- owner or volunteer account. Sessions are random secrets kept only hashed, each with
-- its own CSRF token, and expire.
CREATE TABLE logins (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    owner_id TEXT REFERENCES owners(id),
    volunteer_id TEXT REFERENCES volunteers(id),
    created_at BIGINT NOT NULL,
    CHECK ((owner_id IS NULL) <> (volunteer_id IS NULL))
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    login_id TEXT NOT NULL REFERENCES logins(id),
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_login ON sessions (login_id);
