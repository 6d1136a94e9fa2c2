ALTER TABLE agents DROP COLUMN calibration_bytes;
ALTER TABLE agents DROP COLUMN calibration_day;
ALTER TABLE agents DROP COLUMN class_mismatch;
ALTER TABLE agents DROP COLUMN up_bps;
ALTER TABLE agents DROP COLUMN down_bps;
ALTER TABLE agents DROP COLUMN rtt_us;
ALTER TABLE agents DROP COLUMN calibrated_at;
ALTER TABLE agents DROP COLUMN measured_class;
