ALTER TABLE results DROP COLUMN figures;
ALTER TABLE checks DROP COLUMN throughput;
