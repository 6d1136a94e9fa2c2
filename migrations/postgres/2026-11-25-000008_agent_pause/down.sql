ALTER TABLE agents DROP COLUMN paused_reason;
