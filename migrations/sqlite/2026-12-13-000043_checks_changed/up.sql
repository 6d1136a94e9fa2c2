-- When a check's row last changed, in microseconds (the clock's milliseconds; SQLite
-- has no finer 'now'), stamped by triggers on every insert and update, so that no
-- write can forget it: the owner's edits, a pause, a deletion (deleted_at), the
-- scheduler moving next_run_at, an operator's SQL. Every replica reads the changes of
-- the last seconds (`lastmile_domain::check_lists::ChangeFeed`) to forget the check
-- lists it serves from memory. Strictly increasing per row (a second write in the same
-- millisecond still moves it), so that (id, changed_at) names one write. The triggers'
-- own UPDATE fires no trigger (recursive triggers are off, and the WHEN clause would
-- stop it anyway), and does not count in the changes the outer statement reports.
ALTER TABLE checks ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
UPDATE checks SET changed_at = created_at;
CREATE INDEX checks_changed ON checks (changed_at);

CREATE TRIGGER checks_stamp_insert AFTER INSERT ON checks
BEGIN
    UPDATE checks SET changed_at = CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)
        WHERE id = NEW.id;
END;

CREATE TRIGGER checks_stamp_update AFTER UPDATE ON checks
    WHEN NEW.changed_at = OLD.changed_at
BEGIN
    UPDATE checks SET changed_at = max(OLD.changed_at + 1,
        CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER))
        WHERE id = NEW.id;
END;
