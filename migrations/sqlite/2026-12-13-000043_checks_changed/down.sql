DROP TRIGGER checks_stamp_update;
DROP TRIGGER checks_stamp_insert;
DROP INDEX checks_changed;
ALTER TABLE checks DROP COLUMN changed_at;
