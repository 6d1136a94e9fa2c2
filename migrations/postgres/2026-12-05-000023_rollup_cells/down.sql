DROP TABLE aggregate_rollups;
DROP TABLE rollup_cells;
