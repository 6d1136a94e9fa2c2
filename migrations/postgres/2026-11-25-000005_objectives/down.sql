ALTER TABLE checks DROP COLUMN objectives;
