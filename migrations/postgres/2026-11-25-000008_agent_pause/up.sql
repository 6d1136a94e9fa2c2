-- Why an agent takes no work now (volunteer limits, full spool), as its last heartbeat
-- said; NULL when it takes work. Paused agents are not planned into new runs.
ALTER TABLE agents ADD COLUMN paused_reason TEXT;
