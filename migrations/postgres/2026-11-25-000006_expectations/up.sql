-- Redirects a check's fetch follows at most; one more is the agent's too_many_redirects.
ALTER TABLE checks ADD COLUMN max_redirects INTEGER NOT NULL DEFAULT 5;
-- How the final response was reached: the target address and its family (4 or 6), the
-- HTTP version agreed ("1.1", "2"), the body's size after decoding (bytes stays the
-- wire size), the redirects followed and the time spent on them (curl's time_redirect).
ALTER TABLE results ADD COLUMN remote_addr TEXT;
ALTER TABLE results ADD COLUMN ip_version INTEGER;
ALTER TABLE results ADD COLUMN http_version TEXT;
ALTER TABLE results ADD COLUMN bytes_decoded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN redirects INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN redirect_us BIGINT NOT NULL DEFAULT 0;
