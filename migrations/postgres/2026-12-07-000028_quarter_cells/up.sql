-- Quarter-day cells (rollup_cells with span_us = 6 hours): today's complete quarters,
-- so a report reads four cells a group for the day's first hours, not one per hour.
-- Every quarter from MAX(rolled_until, quarters_until)'s start up to quarters_until is
-- rolled up (quarters without hour cells have none).
ALTER TABLE aggregate_rollups ADD COLUMN quarters_until BIGINT NOT NULL DEFAULT 0;
