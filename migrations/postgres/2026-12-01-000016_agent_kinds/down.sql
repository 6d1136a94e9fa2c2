ALTER TABLE agents DROP COLUMN check_kinds;
