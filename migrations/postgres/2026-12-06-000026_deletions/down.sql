ALTER TABLE checks DROP COLUMN deleted_at;
ALTER TABLE sites DROP COLUMN deleted_at;
