DROP TRIGGER checks_stamp_change ON checks;
DROP FUNCTION checks_stamp_change();
DROP INDEX checks_changed;
ALTER TABLE checks DROP COLUMN changed_at;
