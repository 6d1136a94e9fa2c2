DROP INDEX result_flags_check;
DROP INDEX result_flags_run;
DROP INDEX runs_unarchived;
DROP INDEX runs_unsettled;
ALTER TABLE runs DROP COLUMN archived_at;
ALTER TABLE runs DROP COLUMN settled_flagged;
ALTER TABLE runs DROP COLUMN settled_expired;
ALTER TABLE runs DROP COLUMN settled_done;
ALTER TABLE runs DROP COLUMN settled_at;
