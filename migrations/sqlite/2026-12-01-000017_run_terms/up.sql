-- What a run was admitted with, frozen at admission: the task its agents receive (JSON:
-- kind, URL, expectations, limits) and the price of each result. Editing the check
-- while the run is open changes only later runs, so a run is always measured and paid
-- as it was admitted. NULL for runs created before this migration: they fall back to
-- the check as it is.
ALTER TABLE runs ADD COLUMN task TEXT;
ALTER TABLE runs ADD COLUMN price_minor BIGINT;
ALTER TABLE runs ADD COLUMN price_currency TEXT;
