ALTER TABLE aggregate_rollups DROP COLUMN quarters_until;
