-- When a check's row last changed, in microseconds of the database's clock, stamped by a
-- trigger on every insert and update, so that no write can forget it: the owner's
-- edits, a pause, a deletion (deleted_at), the scheduler moving next_run_at, an
-- operator's SQL. Every replica reads the changes of the last seconds
-- (`lastmile_domain::check_lists::ChangeFeed`) to forget the check lists it serves
-- from memory. Strictly increasing per row (a second write in the same microsecond
-- still moves it), so that (id, changed_at) names one write.
ALTER TABLE checks ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
UPDATE checks SET changed_at = created_at;
CREATE INDEX checks_changed ON checks (changed_at);

CREATE FUNCTION checks_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_at := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    IF TG_OP = 'UPDATE' AND NEW.changed_at <= OLD.changed_at THEN
        NEW.changed_at := OLD.changed_at + 1;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER checks_stamp_change BEFORE INSERT OR UPDATE ON checks
    FOR EACH ROW EXECUTE FUNCTION checks_stamp_change();
