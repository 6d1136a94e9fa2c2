-- Archived runs (each its check's latest when archived, its per-slot rows gone), found
-- by the retention pass to delete those whose check has run since: a check paused for
-- longer than the retention and then resumed left its old run's row behind for good.
CREATE INDEX runs_archived ON runs (check_id) WHERE archived_at IS NOT NULL;
