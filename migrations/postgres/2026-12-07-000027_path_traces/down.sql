DROP TABLE path_traces;
ALTER TABLE agents DROP COLUMN path_trace;
