DROP TABLE aggregate_rollups;
DROP TABLE aggregate_days;
