ALTER TABLE sites DROP COLUMN verified_by;
ALTER TABLE checks DROP COLUMN paused_at;
DROP TABLE api_tokens;
