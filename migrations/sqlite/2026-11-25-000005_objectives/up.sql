-- SLA objectives of a check (JSON list, see controller/src/objectives.rs).
ALTER TABLE checks ADD COLUMN objectives TEXT NOT NULL DEFAULT '[]';
