ALTER TABLE rollup_cells DROP COLUMN figures;
ALTER TABLE aggregates DROP COLUMN figures;
