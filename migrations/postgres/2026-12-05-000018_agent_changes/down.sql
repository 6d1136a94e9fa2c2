DROP INDEX agents_changed_at;
ALTER TABLE agents DROP COLUMN revoked_at;
ALTER TABLE agents DROP COLUMN changed_at;
