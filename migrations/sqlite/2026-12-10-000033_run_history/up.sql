-- A run's outcome is kept on the run once nothing more can happen to it (settled: past
-- its deadline, no slot pending or leased, none of its results waiting to be folded),
-- so that its view costs one row and survives its assignments and results. Then, once
-- its results have aged out (`result_retention_days`), its assignments, planned agents
-- and payment links are deleted, and the run itself unless it is its check's latest
-- (kept, marked archived): without this, `assignments`, `run_agents` and
-- `result_payments` grew by ~400 bytes a result forever (see `run_history`).
ALTER TABLE runs ADD COLUMN settled_at BIGINT;
ALTER TABLE runs ADD COLUMN settled_done INTEGER;
ALTER TABLE runs ADD COLUMN settled_expired INTEGER;
ALTER TABLE runs ADD COLUMN settled_flagged INTEGER;
ALTER TABLE runs ADD COLUMN archived_at BIGINT;
-- The runs still to settle (a few minutes' worth) and still to archive (the retention
-- window's), each read oldest deadline first.
CREATE INDEX runs_unsettled ON runs (deadline_at) WHERE settled_at IS NULL;
CREATE INDEX runs_unarchived ON runs (deadline_at, id) WHERE archived_at IS NULL;
-- Flags by run and by check: a run's and a check's flagged results are counted from
-- their flags (not by reading every result of the check), and deleting a run checks
-- that no flag refers to it by index, not by reading every flag.
CREATE INDEX result_flags_run ON result_flags (run_id);
CREATE INDEX result_flags_check ON result_flags (check_id);
