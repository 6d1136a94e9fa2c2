-- Connection class: declared by the volunteer, then measured by calibration against
-- the controller. Selection and reports use the measured class once there is one.
ALTER TABLE agents ADD COLUMN measured_class TEXT;
ALTER TABLE agents ADD COLUMN calibrated_at BIGINT;
ALTER TABLE agents ADD COLUMN rtt_us BIGINT;
ALTER TABLE agents ADD COLUMN down_bps BIGINT;
ALTER TABLE agents ADD COLUMN up_bps BIGINT;
-- Flagged: the measured class contradicts the declared one.
ALTER TABLE agents ADD COLUMN class_mismatch BOOLEAN NOT NULL DEFAULT 0;
-- Calibration bytes served today (UTC day number), for the daily cap.
ALTER TABLE agents ADD COLUMN calibration_day BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN calibration_bytes BIGINT NOT NULL DEFAULT 0;
